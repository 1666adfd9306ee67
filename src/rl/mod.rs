//! Reinforcement-learning arithmetic that needs no model: answer metrics, every role's reward
//! under each scheme, and group-relative advantages. All pure functions over plain numbers,
//! tested on hand-computed cases; the losses over tensors live with the model runtime.

pub mod advantages;
pub mod metrics;
pub mod rewards;
