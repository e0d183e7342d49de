//! semiflow engine: pipeline files → DAG → cached, resumable execution of `semiflow-stages` kinds.

pub mod graph;
pub mod pipeline;
pub mod plan;
