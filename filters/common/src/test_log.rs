//! A `log` logger for the unit tests of the functions that log: it keeps each thread's lines
//! (tests run on threads of one process, and a process has one logger).

use std::cell::RefCell;
use std::sync::Once;

use log::{Level, Log, Metadata, Record};

thread_local! {
    static LINES: RefCell<Vec<(Level, String)>> = const { RefCell::new(Vec::new()) };
}

struct Capture;

impl Log for Capture {
    fn enabled(&self, _metadata: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        LINES.with(|lines| {
            lines
                .borrow_mut()
                .push((record.level(), record.args().to_string()));
        });
    }

    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;
static INSTALL: Once = Once::new();

/// Runs `f` and returns what it logged on this thread.
pub fn capture(f: impl FnOnce()) -> Vec<(Level, String)> {
    INSTALL.call_once(|| {
        // Fails only when another logger is installed; then nothing is captured and the
        // assertions say so.
        let _ = log::set_logger(&CAPTURE);
        log::set_max_level(log::LevelFilter::Trace);
    });
    LINES.with(|lines| lines.borrow_mut().clear());
    f();
    LINES.with(|lines| lines.take())
}
