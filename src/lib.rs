//! semiflow engine: pipeline files → DAG → cached, resumable execution of `semiflow-stages` kinds.

pub mod plan;
