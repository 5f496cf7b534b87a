use faer::{unzip, zip, Mat, Par};
use snf::layers::conv::{ConvWorkspace, SelfNormConv2d, SelfNormConv2dConfig};
fn main() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    if std::env::args().nth(2).as_deref() == Some("pool") { pool.install(run) } else { run() }
}
fn run() {
    let par = if std::env::args().nth(1).as_deref() == Some("seq") { Par::Seq } else { Par::rayon(0) };
    let cfg = SelfNormConv2dConfig::new(16, [7, 7], 3);
    let layer = SelfNormConv2d::<f32>::new(cfg, &mut snf::init::rng(0)).unwrap();
    let d = layer.dim();
    let x = Mat::<f32>::from_fn(d, 100, |i, j| ((i + j) % 9) as f32 / 9.0);
    let (mut z, mut dz, mut dx) = (Mat::zeros(d, 100), Mat::zeros(d, 100), Mat::zeros(d, 100));
    let mut ws = ConvWorkspace::new(&layer, 100, par);
    let mut g = layer.zero_grads();
    let t = std::time::Instant::now();
    let n = 1000;
    for _ in 0..n {
        layer.forward(x.as_ref(), z.as_mut(), &mut ws).unwrap();
        zip!(dz.as_mut(), z.as_ref()).for_each(|unzip!(dz, z)| *dz = -*z);
        layer.backward(x.as_ref(), dz.as_ref(), dx.as_mut(), &mut g, &mut ws, 1.0).unwrap();
    }
    println!("{:?} per step", t.elapsed() / n);
}
