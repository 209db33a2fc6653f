//! encore's incremental engine (work in progress: the lead engineer is writing it).
#![warn(missing_docs)]

pub mod postgres;
pub mod tables;
