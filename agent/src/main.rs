//! faultline-agent: skeleton until its own issue lands.

fn main() {
    println!("faultline-agent {}", env!("CARGO_PKG_VERSION"));
}
