//! Memory planning and the op audit of the trainer's graphs without
//! computing them: over planned weights ([`DeviceModel::planned`]) and a
//! planned sequence, every stage of a training step is built as
//! [`crate::train`] builds it, then sized by ggml's graph allocator
//! ([`plan_step`]) or checked against a GPU's `supports_op`
//! ([`audit_step`]). Neither needs a model file or the memory it plans.

use crate::audit::{audit, GpuTarget, Violation};
use crate::error::GgmlError;
use crate::ffi::{Backend, Graph};
use crate::seq::{Chunks, Keep, Seq};
use crate::train::{with_stage, Stage};
use crate::weights::{DeviceLora, DeviceModel};

/// Working memory `graph` would take on `backend`'s buffer type: ggml's
/// graph allocator plans it without allocating (see [`Graph::plan_bytes`];
/// weights and adapters are not counted).
pub fn plan_bytes(graph: &Graph<'_>, backend: &Backend) -> Result<usize, GgmlError> {
    graph.plan_bytes(backend)
}

/// What a training step over one sequence needs on the device besides the
/// weights and the adapter (both resident for the whole run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepPlan {
    /// Tokens of the sequence.
    pub n_tok: usize,
    /// The chunk sizes planned with.
    pub chunks: Chunks,
    /// The sequence's buffer: every block input, two gradient buffers,
    /// inputs and masks (held from the forward to the end of the backward).
    pub sequence: usize,
    /// The largest working memory of any one stage graph (freed when the
    /// graph is done).
    pub peak_graph: usize,
    /// The stage that needs it.
    pub peak_stage: Stage,
}

impl StepPlan {
    /// `sequence + peak_graph`: the most the step holds at once.
    pub fn working_bytes(&self) -> usize {
        self.sequence + self.peak_graph
    }
}

/// Builds every stage graph of a training step over `n_tok` tokens on a
/// planned sequence (nothing allocated or computed) and hands each to `f`.
pub fn for_each_stage(
    model: &DeviceModel,
    lora: &DeviceLora,
    n_tok: usize,
    chunks: Chunks,
    f: impl FnMut(Stage, &Graph<'_>) -> Result<(), GgmlError>,
) -> Result<(), GgmlError> {
    visit(model, lora, &planned_seq(model, n_tok, chunks)?, f)
}

fn planned_seq(model: &DeviceModel, n_tok: usize, chunks: Chunks) -> Result<Seq, GgmlError> {
    check_len(model, n_tok)?;
    Seq::planned(model, n_tok, chunks, Keep::Checkpoints)
}

/// Builds every stage graph of a training step over `seq` and hands each
/// to `f`.
fn visit(
    model: &DeviceModel,
    lora: &DeviceLora,
    seq: &Seq,
    mut f: impl FnMut(Stage, &Graph<'_>) -> Result<(), GgmlError>,
) -> Result<(), GgmlError> {
    for stage in Stage::all(model.config().n_layer, seq.n_tok(), seq.chunks(), true) {
        with_stage(model, Some(lora), seq, stage, |_, built| {
            f(stage, &built.graph)
        })?;
    }
    Ok(())
}

/// Plans a training step (forward with checkpoints, then backward) over
/// `n_tok` tokens with `chunks` on `backend`'s buffer type: every stage's
/// graph is built and sized, nothing is allocated or computed. `model` and
/// `lora` may be planned or real.
pub fn plan_step(
    backend: &Backend,
    model: &DeviceModel,
    lora: &DeviceLora,
    n_tok: usize,
    chunks: Chunks,
) -> Result<StepPlan, GgmlError> {
    let seq = planned_seq(model, n_tok, chunks)?;
    let mut peak = (0, Stage::Embed);
    visit(model, lora, &seq, |stage, graph| {
        let bytes = graph.plan_bytes(backend)?;
        if bytes > peak.0 {
            peak = (bytes, stage);
        }
        Ok(())
    })?;
    Ok(StepPlan {
        n_tok,
        chunks,
        sequence: seq.bytes(),
        peak_graph: peak.0,
        peak_stage: peak.1,
    })
}

/// Fails with [`GgmlError::OverBudget`] when the resident weights and
/// adapter plus a step's working memory (`plan`) exceed `budget` bytes.
pub fn check_budget(
    backend: &Backend,
    model: &DeviceModel,
    lora: &DeviceLora,
    plan: &StepPlan,
    budget: usize,
) -> Result<(), GgmlError> {
    let needs = model.bytes() + lora.bytes() + plan.working_bytes();
    if needs <= budget {
        return Ok(());
    }
    let mib = |b: usize| b.div_ceil(1 << 20);
    Err(GgmlError::OverBudget {
        backend: backend.name().to_string(),
        n_tok: plan.n_tok,
        needs_mib: mib(needs),
        budget_mib: mib(budget),
        weights_mib: mib(model.bytes()),
        adapter_mib: mib(lora.bytes()),
        sequence_mib: mib(plan.sequence),
        graph_mib: mib(plan.peak_graph),
    })
}

/// Every node of every graph of a training step over `n_tok` tokens that
/// `target` would refuse (empty: the whole step runs there), and the
/// number of nodes audited.
pub fn audit_step(
    model: &DeviceModel,
    lora: &DeviceLora,
    n_tok: usize,
    chunks: Chunks,
    target: GpuTarget,
) -> Result<(Vec<Violation>, usize), GgmlError> {
    let mut refused = Vec::new();
    let mut nodes = 0;
    for_each_stage(model, lora, n_tok, chunks, |_, graph| {
        refused.extend(audit(graph, target));
        nodes += graph.n_nodes();
        Ok(())
    })?;
    Ok((refused, nodes))
}

pub(crate) fn check_len(model: &DeviceModel, n_tok: usize) -> Result<(), GgmlError> {
    let max = model.config().context_length;
    if n_tok < 2 || n_tok > max {
        return Err(GgmlError::BadRequest(format!(
            "{n_tok} tokens: a step needs 2 to {max} (the model's context length)"
        )));
    }
    Ok(())
}
