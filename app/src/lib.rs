//! The `ditlens` application: the command line, its commands, the explorer window and the models
//! built into the binary. `main.rs` only parses and reports the one error.

pub mod cli;
pub mod commands;
pub mod device;
pub mod gui;
pub mod models;
