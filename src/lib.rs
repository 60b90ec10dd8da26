//! sftpgw: an on-premises SFTP-to-S3 transfer gateway.
//!
//! Module dependencies are one-way (see `docs/ARCHITECTURE.md`; `tests/architecture.rs` checks
//! those of `journal`, `spool` and `sftp`): `sftp → spool → journal`; `drain → spool, journal`;
//! `status` reads snapshots; `main.rs` wires everything. `limits` and `telemetry` are leaves
//! every module may use; `config` parses into the types of the modules it configures (`spool`,
//! `sftp`), which never read it.

// Tests may cast and go undocumented; the library may not (see `[lints]` in Cargo.toml).
#![cfg_attr(
    test,
    allow(
        missing_docs,
        clippy::as_conversions,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_possible_wrap
    )
)]

pub mod config;
pub mod console;
pub mod demo;
pub mod drain;
pub mod events;
#[cfg(test)]
mod fuzz;
pub mod gateway;
pub mod health;
pub mod https;
pub mod journal;
pub mod limits;
pub mod logfmt;
pub mod names;
pub mod num;
pub mod report;
pub mod s3server;
pub mod sftp;
pub mod spool;
pub mod status;
pub mod telemetry;
pub mod webhook;
