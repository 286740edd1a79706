//! Servers that do not outlive the process that started them. A bench stopped by a signal
//! runs no destructor, so the hosts and nats-servers it started would keep running and load
//! the machine for every later measurement; the kernel kills them instead.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

static TIED: AtomicBool = AtomicBool::new(false);

/// Makes every server this process starts from now on (hosts, nats-server, redis-server) die
/// with it, however it ends. The kernel's signal follows the thread that started the server,
/// so this is only for a process whose starting threads live as long as it does, as the
/// bench's runtime does; a test's runtime ends with its test.
pub fn die_with_this_process() {
    TIED.store(true, Ordering::Relaxed);
}

/// Ties a server's command to this process, if [`die_with_this_process`] was called.
pub fn tie(command: &mut Command) -> &mut Command {
    if TIED.load(Ordering::Relaxed) {
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed; prctl is one and touches no shared state.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    command
}
