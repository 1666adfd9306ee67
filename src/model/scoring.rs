//! Scoring given sequences: right-padded batches of prompt + completion, and the per-token
//! log-probs of their completion tokens at a sampling temperature (projecting only the loss
//! positions through the vocabulary). What the trainer, the RL loss and the tests score with.
//!
//! Conventions: a batch is right-padded; `logp[b, t]` is the log-prob of token `t + 1` given
//! tokens `0..=t`, so per-token tensors are `(B, L - 1)` and their masks select completion tokens
//! produced by the policy.

use candle_core::{DType, Device, Tensor};

use super::error::{ModelError, Result};
use super::fused::target_logprobs;
use super::llama::{Model, Partial};

/// A right-padded batch of prompt + completion sequences.
#[derive(Debug, Clone)]
pub struct SeqBatch {
    /// `(B, L)` u32, padded with `pad_id`.
    pub input_ids: Tensor,
    /// `(B, L)` u32, 1 on real tokens.
    pub attention_mask: Tensor,
    /// `(B, L - 1)` f32: 1 where target token `t + 1` is a completion token
    /// with loss mask 1.
    pub loss_mask: Tensor,
}

/// Builds a [`SeqBatch`] from `(prompt_ids, completion_ids,
/// completion_loss_mask)` triples (the mask as recorded by
/// [`crate::model::sample::generate`]).
pub fn build_batch(
    seqs: &[(Vec<u32>, Vec<u32>, Vec<u8>)],
    pad_id: u32,
    device: &Device,
) -> Result<SeqBatch> {
    let l = seqs
        .iter()
        .map(|(p, c, _)| p.len() + c.len())
        .max()
        .unwrap_or(0);
    if l < 2 {
        return Err(ModelError::InvalidArgument(
            "build_batch: need sequences of at least 2 tokens".into(),
        ));
    }
    let b = seqs.len();
    let mut ids = Vec::with_capacity(b * l);
    let mut att = Vec::with_capacity(b * l);
    let mut lm = Vec::with_capacity(b * (l - 1));
    for (p, c, m) in seqs {
        if m.len() != c.len() {
            return Err(ModelError::InvalidArgument(format!(
                "build_batch: {} completion tokens but {} mask entries",
                c.len(),
                m.len()
            )));
        }
        let n = p.len() + c.len();
        ids.extend(p.iter().chain(c.iter()).copied());
        ids.extend(std::iter::repeat_n(pad_id, l - n));
        att.extend((0..l).map(|j| u32::from(j < n)));
        for t in 0..l - 1 {
            let target = t + 1;
            let v = if target >= p.len() && target < n {
                f32::from(m[target - p.len()])
            } else {
                0.0
            };
            lm.push(v);
        }
    }
    Ok(SeqBatch {
        input_ids: Tensor::from_vec(ids, (b, l), device)?,
        attention_mask: Tensor::from_vec(att, (b, l), device)?,
        loss_mask: Tensor::from_vec(lm, (b, l - 1), device)?,
    })
}

/// Per-token log-probs `(B, L - 1)`: `logp[b, t] = log p(ids[b, t+1] |
/// ids[b, ..=t])`, zero where the target is padding. Differentiable.
pub fn token_logprobs(
    model: &Model,
    input_ids: &Tensor,
    attention_mask: &Tensor,
) -> Result<Tensor> {
    let (b, l) = input_ids.dims2()?;
    if l < 2 {
        return Err(ModelError::InvalidArgument(
            "token_logprobs: length < 2".into(),
        ));
    }
    let logits = model.forward_full(input_ids, attention_mask)?; // (B, L, V)
    let v = logits.dim(2)?;
    // Every position gets a target (the last one a dummy, cut below), so the logits are used
    // as they are instead of copying their first L-1 positions.
    let next = Tensor::cat(
        &[input_ids.narrow(1, 1, l - 1)?, input_ids.narrow(1, 0, 1)?],
        1,
    )?;
    let (logp, _) = target_logprobs(&logits.reshape((b * l, v))?, &next.flatten_all()?)?;
    let picked = logp.reshape((b, l))?.narrow(1, 0, l - 1)?;
    let tmask = attention_mask
        .narrow(1, 1, l - 1)?
        .to_dtype(DType::F32)?
        .reshape((b, l - 1))?;
    Ok((picked * tmask)?)
}

/// `sum(x * mask) / max(sum(mask), 1)`: a scalar; 0 (not NaN) for an empty
/// mask.
#[cfg(test)]
pub(crate) fn masked_mean(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let mask = mask.to_dtype(x.dtype())?;
    let num = (x * &mask)?.sum_all()?;
    let den = mask.sum_all()?.maximum(1.0)?;
    Ok(num.broadcast_div(&den)?)
}

/// The loss positions of a batch: flat indices into `(B, L - 1)` where the loss mask is 1,
/// with each position's sequence and target token.
pub struct LossPositions {
    pub flat: Vec<u32>,
    pub seq: Vec<usize>,
    pub targets: Vec<u32>,
    /// Loss tokens per sequence.
    pub tokens: Vec<u32>,
}

impl LossPositions {
    pub fn of(batch: &SeqBatch) -> Result<LossPositions> {
        let mask = batch.loss_mask.to_vec2::<f32>()?;
        let ids = batch.input_ids.to_vec2::<u32>()?;
        let width = mask.first().map_or(0, Vec::len);
        let mut p = LossPositions {
            flat: Vec::new(),
            seq: Vec::new(),
            targets: Vec::new(),
            tokens: vec![0; mask.len()],
        };
        for (b, row) in mask.iter().enumerate() {
            for (t, &m) in row.iter().enumerate() {
                if m > 0.0 {
                    p.flat.push((b * width + t) as u32);
                    p.seq.push(b);
                    p.targets.push(ids[b][t + 1]);
                    p.tokens[b] += 1;
                }
            }
        }
        Ok(p)
    }
}

/// The logits `(N, V)` at the loss positions `pos`, divided by `temperature` (the distribution a
/// role sampled from). Only loss positions go through the vocabulary projection, which
/// dominates the cost of training a small model with a large vocabulary.
pub(crate) fn selected_logits(
    model: &Model,
    batch: &SeqBatch,
    pos: &LossPositions,
    temperature: f64,
) -> Result<Tensor> {
    let partial = model.forward_partial(&batch.input_ids, &batch.attention_mask, 0)?;
    selected_logits_from(model, &partial, batch, pos, temperature)
}

/// [`selected_logits`] of a batch already part-way up the stack: `partial` is `batch` through
/// the first layers, of `model` or of a model that shares them (see [`Partial`]).
pub(crate) fn selected_logits_from(
    model: &Model,
    partial: &Partial,
    batch: &SeqBatch,
    pos: &LossPositions,
    temperature: f64,
) -> Result<Tensor> {
    let (b, l) = batch.input_ids.dims2()?;
    let dev = batch.input_ids.device();
    let h = model.finish_hidden(partial)?;
    let hidden = h.dim(2)?;
    let flat = Tensor::from_slice(&pos.flat, pos.flat.len(), dev)?;
    let h = h
        .narrow(1, 0, l - 1)?
        .reshape((b * (l - 1), hidden))?
        .index_select(&flat, 0)?;
    let logits = model.project(&h)?;
    if temperature > 0.0 && temperature != 1.0 {
        Ok((logits / temperature)?)
    } else {
        Ok(logits)
    }
}

/// Log-probs `(N,)` of the target tokens at `pos` under the model at `temperature`, and the
/// entropies `(N,)` (detached) of those positions' next-token distributions.
pub fn selected_logprobs(
    model: &Model,
    batch: &SeqBatch,
    pos: &LossPositions,
    temperature: f64,
) -> Result<(Tensor, Tensor)> {
    let dev = batch.input_ids.device();
    let targets = Tensor::from_slice(&pos.targets, pos.targets.len(), dev)?;
    target_logprobs(&selected_logits(model, batch, pos, temperature)?, &targets)
}
