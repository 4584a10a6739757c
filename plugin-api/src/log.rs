//! Logging from inside a plugin. A plugin must not install a logger of its own (a logger
//! inside a dylib is a separate global the host never sees); it writes through the
//! [`Logger`] the host hands to `Provider::new`, which forwards to the host's `tracing`.
//! Never log secrets or message bodies.

use std::fmt;
use std::sync::Arc;

/// Log level, numbered as on the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

impl Level {
    pub fn from_u32(n: u32) -> Level {
        match n {
            1 => Level::Error,
            2 => Level::Warn,
            3 => Level::Info,
            4 => Level::Debug,
            _ => Level::Trace,
        }
    }
}

type Sink = Arc<dyn Fn(Level, &str) + Send + Sync>;

/// A cheap, cloneable handle to the host's log.
#[derive(Clone, Default)]
pub struct Logger {
    sink: Option<Sink>,
}

impl fmt::Debug for Logger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Logger")
            .field("connected", &self.sink.is_some())
            .finish()
    }
}

impl Logger {
    /// A logger that drops everything (unit tests).
    pub fn discard() -> Logger {
        Logger { sink: None }
    }

    /// A logger that calls `f` for every line (the ABI glue, and tests that check logs).
    pub fn from_fn(f: impl Fn(Level, &str) + Send + Sync + 'static) -> Logger {
        Logger {
            sink: Some(Arc::new(f)),
        }
    }

    pub fn log(&self, level: Level, message: &str) {
        if let Some(sink) = &self.sink {
            sink(level, message);
        }
    }

    pub fn error(&self, message: impl AsRef<str>) {
        self.log(Level::Error, message.as_ref());
    }
    pub fn warn(&self, message: impl AsRef<str>) {
        self.log(Level::Warn, message.as_ref());
    }
    pub fn info(&self, message: impl AsRef<str>) {
        self.log(Level::Info, message.as_ref());
    }
    pub fn debug(&self, message: impl AsRef<str>) {
        self.log(Level::Debug, message.as_ref());
    }
}
