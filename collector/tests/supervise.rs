//! A panic in any task or thread ends the process with an error exit (so systemd
//! restarts a whole collector rather than keeping a half-dead one). The test runs
//! itself again as a child process that installs the same hook `run` installs
//! (`supervise::exit_on_panic`) and then panics in a tokio task, or in a plain
//! thread, while the main thread waits on: the child must exit 101 at once.

use std::process::{Command, Stdio};
use std::time::Duration;

use faultline_collector::supervise::{PANIC_EXIT_CODE, exit_on_panic};
use faultline_tests::Child;

/// Set in the child: which kind of panic to cause.
const CHILD: &str = "FAULTLINE_SUPERVISE_TEST_CHILD";

/// The child's body: a runtime like `run`'s, a task or thread that panics, and a
/// main thread that would otherwise carry on for ten minutes.
fn child(kind: &str) -> ! {
    exit_on_panic();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match kind {
            "task" => {
                tokio::spawn(async { panic!("a task panicked on purpose") });
            }
            _ => {
                std::thread::spawn(|| panic!("a thread panicked on purpose"));
            }
        }
        tokio::time::sleep(Duration::from_secs(600)).await;
    });
    // Reached only if the panic did not end the process.
    std::process::exit(0)
}

fn run_child(test: &str, kind: &str) -> (Option<i32>, String) {
    let exe = std::env::current_exe().unwrap();
    let mut c = Child::spawn(
        "test child",
        Command::new(exe)
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, kind)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
    .unwrap();
    // Taken before waiting: the handle is gone once the child is reaped.
    let stderr = c.inner_mut().and_then(|p| p.stderr.take());
    let status = c
        .wait_timeout(Duration::from_secs(60))
        .expect("the child kept running after its panic");
    let mut err = String::new();
    if let Some(mut e) = stderr {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    (status.code(), err)
}

#[test]
fn a_panicking_task_ends_the_process() {
    if let Ok(kind) = std::env::var(CHILD) {
        child(&kind);
    }
    let (code, err) = run_child("a_panicking_task_ends_the_process", "task");
    assert_eq!(code, Some(PANIC_EXIT_CODE), "{err}");
    assert!(
        err.contains("a task panicked on purpose") && err.contains("ends the process"),
        "{err}"
    );
}

#[test]
fn a_panicking_thread_ends_the_process() {
    if let Ok(kind) = std::env::var(CHILD) {
        child(&kind);
    }
    let (code, err) = run_child("a_panicking_thread_ends_the_process", "thread");
    assert_eq!(code, Some(PANIC_EXIT_CODE), "{err}");
    assert!(
        err.contains("a thread panicked on purpose") && err.contains("ends the process"),
        "{err}"
    );
}
