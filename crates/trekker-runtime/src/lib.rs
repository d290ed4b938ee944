//! The bot runtime of a node.
//!
//! A [`BotDriver`] starts, stops and watches one bot: [`SimulatedDriver`]
//! (the default; an in-process stand-in that connects to nothing) or
//! [`ProcessDriver`] (runs BOT_COMMAND per bot; see docs/bot-process-contract.md).
//! The [`Supervisor`] reconciles what should run on this node (from the
//! database) with what runs, restarts crashed bots with capped backoff,
//! gives up after repeated crashes, and restarts a bot when its credentials
//! version changes. Its node lease covers every bot it runs, so a bot never
//! runs on two nodes (invariant 4). A bot's session folder is restored
//! before it starts and saved while it runs ([`state`], invariant 9).

mod driver;
pub mod output;
mod process;
pub mod sandbox;
mod simulated;
pub mod state;
mod supervisor;

pub use driver::{
    BotDriver, BotEvent, BotSpec, DriverError, DriverEvent, OUT_OF_MEMORY, RunningBot, SessionSync, StateSink,
};
pub use process::{ProcessDriver, Resources, Totals};
pub use simulated::{Fault, RunObserver, SimulatedDriver};
pub use supervisor::{BOT_CRASHES, BOT_OOM_KILLS, BOTS_RUNNING, SessionConfig, Supervisor, SupervisorTuning};
