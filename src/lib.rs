//! semiflow engine: pipeline files → DAG → cached, resumable execution of `semiflow-stages` kinds.

pub mod graph;
pub mod pipeline;
pub mod plan;
pub mod plots;

pub mod audit;
pub mod claims;
pub mod cli;
pub mod exec;
pub mod explain;
pub mod export;
pub mod gc;
pub mod key;
pub mod logging;
pub mod progress;
pub mod report;
pub mod show;
pub mod slurm;
pub mod store;
pub mod timefmt;
