//! One module per verb: its clap arguments and its `run`, which returns the
//! process exit code.

pub mod copy;
pub mod cp;
pub mod create;
pub mod describe;
pub mod exec;
pub mod image;
pub mod ls;
pub mod name;
pub mod node;
pub mod run;
pub mod server;
pub mod snapshot;
pub mod ssh;
pub mod suspend;
pub mod terminate;
