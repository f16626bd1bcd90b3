fn main() {
    let t = std::time::Instant::now();
    let f = edge_filter::Filter::load(&edge_filter::LoadOptions::default());
    println!("load: {:?} ok={}", t.elapsed(), f.is_ok());
    if let Err(e) = f { println!("{:#}", anyhow::Error::from(e)); }
}
