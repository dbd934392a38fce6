//! `minarc serve` and the [`Remote`] backend (issue 7, S1–S8): the same scripts against a
//! model on another machine.
//!
//! The server holds a [`crate::backend::Local`] backend and its activation cache and answers
//! over HTTP; [`Remote`] implements [`crate::backend::Backend`] by calling it, so
//! `Remote::connect(url, token)` can replace `Local::load(dir, ..)` and every number comes
//! out the same. Wire format: [`wire`].

pub mod cli;
pub mod client;
pub mod server;
pub mod wire;

pub use client::Remote;
pub use server::{RunningServer, ServeOptions};
