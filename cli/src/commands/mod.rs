//! The commands of `commitq`, one file per group.

pub mod actions;
pub mod enqueue;
pub mod jobs;
pub mod maintain;
pub mod status;
