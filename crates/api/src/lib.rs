//! Wire types of the sbx HTTP contract, shared by the server, executor, agent
//! and CLI. Field names and status strings follow `shared/reference/WIRE.md`
//! exactly: the unmodified Tensorlake client validates them.

pub mod daemon;
pub mod error;
pub mod image;
pub mod logs;
pub mod node;
pub mod pool;
pub mod sandbox;
pub mod secret;
pub mod snapshot;

pub use error::ErrorBody;

/// Port of the in-sandbox daemon (the agent).
pub const AGENT_PORT: u16 = 9501;
