//! faultline-collector: skeleton until its own issue lands.

fn main() {
    println!("faultline-collector {}", env!("CARGO_PKG_VERSION"));
}
