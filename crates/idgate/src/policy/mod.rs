//! The invoker policy (being written).
