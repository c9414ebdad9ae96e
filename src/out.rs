//! Standard output for the CLI. A reader that goes away early
//! (`pic-store list | head -1`) ends the program quietly with status 0,
//! as `head` expects, instead of the panic `println!` gives on a broken
//! pipe. Every other write error is reported on stderr once and ends the
//! program with status 2, the code of spec §3 for the program's own
//! failures.

use std::io::{ErrorKind, Write};

/// `println!` for the CLI's standard output.
macro_rules! outln {
    () => { $crate::out::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::write(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` for the CLI's standard output.
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::write(format_args!($($arg)*)) };
}

pub(crate) use {out, outln};

/// Writes `args` to standard output and flushes it (the lock is line
/// buffered, so a reader sees each line as it is printed).
pub fn write(args: std::fmt::Arguments) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("pic-store: cannot write to standard output: {e}");
        std::process::exit(2);
    }
}
