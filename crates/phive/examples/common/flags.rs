//! The benchmark examples' command lines: `--flag value` pairs and bare switches. `--help` or
//! `-h` prints the example's usage and exits; a missing value or an unknown flag is an error
//! that shows the usage, never a backtrace of a parse that went on.

use anyhow::{anyhow, Error, Result};

/// The flags of this process's command line, read one at a time.
pub struct Flags {
    args: std::iter::Skip<std::env::Args>,
    usage: &'static str,
}

impl Flags {
    /// The command line of an example whose usage line is `usage`.
    pub fn new(usage: &'static str) -> Flags {
        Flags { args: std::env::args().skip(1), usage }
    }

    /// The next flag; on `--help` or `-h`, prints the usage and exits.
    pub fn next_flag(&mut self) -> Option<String> {
        let flag = self.args.next()?;
        if flag == "--help" || flag == "-h" {
            println!("{}", self.usage);
            std::process::exit(0);
        }
        Some(flag)
    }

    /// The value that follows `flag`.
    pub fn value(&mut self, flag: &str) -> Result<String> {
        let value = self.args.next();
        value.ok_or_else(|| self.error(format!("{flag} needs a value")))
    }

    /// An error that says `what` went wrong and shows the usage: an unknown flag, a required
    /// one left out.
    pub fn error(&self, what: impl std::fmt::Display) -> Error {
        anyhow!("{what}\n{}", self.usage)
    }
}
