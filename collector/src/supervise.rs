//! A panic anywhere ends the process, with an error exit.
//!
//! tokio catches a task's panic and keeps the runtime going, and a panicking std
//! thread just ends: either way the collector would live on half dead (ingest
//! stopped, or the engine's lock poisoned, while HTTP still answers) and systemd
//! would see a healthy process. [`exit_on_panic`] installs a panic hook that prints
//! the panic as Rust does and then exits with [`PANIC_EXIT_CODE`], so the service
//! manager restarts a whole collector (history is SQLite in WAL mode: an exit mid-write
//! loses at most the uncommitted batch, like a crash).

/// The exit status after a panic (Rust's own for a panic in `main`).
pub const PANIC_EXIT_CODE: i32 = 101;

/// Makes a panic in any thread or task end the process with [`PANIC_EXIT_CODE`].
/// For the long-running commands (`run`, `demo`); not for tests or library users
/// that catch panics on purpose.
pub fn exit_on_panic() {
    let print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        print(info);
        eprintln!(
            "faultline-collector: a panic in thread {:?} ends the process (exit {PANIC_EXIT_CODE}) so it is restarted whole",
            std::thread::current().name().unwrap_or("unnamed")
        );
        std::process::exit(PANIC_EXIT_CODE);
    }));
}
