//! Reinforcement-learning arithmetic that needs no model: answer metrics, every role's reward
//! under each scheme, the GRM's labels, and group-relative advantages. All pure functions over plain numbers,
//! tested on hand-computed cases — and the policy-gradient loss over tensors (`loss`), the one
//! formula every trained role's update uses.

pub(crate) mod advantages;
pub(crate) mod labels;
pub mod loss;
pub(crate) mod metrics;
pub mod rewards;
