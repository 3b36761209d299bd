//! One module per verb: its clap arguments and its `run`, which returns the
//! process exit code.

pub mod copy;
pub mod cp;
pub mod create;
pub mod describe;
pub mod exec;
pub mod image;
pub mod logs;
pub mod ls;
pub mod name;
pub mod network;
pub mod node;
pub mod pool;
pub mod run;
pub mod secret;
pub mod server;
pub mod snapshot;
pub mod ssh;
pub mod suspend;
pub mod template;
pub mod terminate;
