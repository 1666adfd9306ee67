//! Stages: the commands of a round. Every stage is a value implementing [`Stage`]: it declares
//! its parameters, the stages whose outputs it reads and any files outside the run dir it reads,
//! before anything runs, and then does its work in `run`. The runner, the manifest and the rerun
//! check treat all stages alike through this one contract.

pub(crate) mod agent;
pub(crate) mod apply;
pub(crate) mod contract;
pub(crate) mod corpus;
pub(crate) mod embed;
pub mod env;
pub mod eval;
pub(crate) mod generate;
pub(crate) mod index;
pub(crate) mod init;
pub(crate) mod judge;
pub(crate) mod kit;
pub mod qa;
pub(crate) mod reward;
pub(crate) mod rollout;
pub(crate) mod selfcheck;
mod sources;
pub(crate) mod train;
pub(crate) mod warmup;

use std::path::PathBuf;

pub use contract::{Reads, Stage, StageContext, StageOutput, Upstream};

/// Every stage asl knows, in a round's order.
pub fn all() -> Vec<&'static dyn Stage> {
    vec![
        &corpus::CorpusStage,
        &qa::QaStage,
        &index::IndexStage,
        &embed::EmbedStage,
        &init::InitStage,
        &warmup::WarmupStage,
        &generate::GenerateStage,
        &selfcheck::SelfCheckStage,
        &rollout::RolloutStage,
        &judge::JudgeStage,
        &reward::RewardStage,
        &train::TrainStage,
        &apply::ApplyStage,
        &eval::EvalStage,
    ]
}

pub fn find(name: &str) -> Option<&'static dyn Stage> {
    all().into_iter().find(|s| s.name() == name)
}

pub(crate) fn known_names() -> String {
    all()
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where the shipped assets live: `$ASL_ASSETS`, else `./assets` (what
/// `scripts/fetch-assets.sh` fills).
pub fn assets_dir() -> PathBuf {
    std::env::var_os("ASL_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("assets"))
}

/// Every stage's settings as Markdown, from the same [`crate::params::ParamSpec`] definitions that `asl <stage>
/// --help` prints and the pipeline loader checks: `docs/settings.md` is this text (a test keeps
/// them equal).
pub fn settings_markdown() -> String {
    let mut out = String::from(
        "# Stage settings\n\n\
         Every parameter of every stage, with its default and the values it accepts, generated \
         from the stages' own definitions (`asl <stage> --help` prints the same). Set one in a \
         pipeline's `[params.<stage>]` table or with `--set <stage>.<key>=<value>`; a value \
         outside what is listed is refused when the pipeline loads, before any stage runs.\n\
         Regenerate with `ASL_BLESS=1 cargo test --test integration settings_doc`.\n",
    );
    for stage in all() {
        out.push_str(&format!(
            "\n## `{}`\n\n{}.\n\n",
            stage.name(),
            stage.about()
        ));
        out.push_str("| key | default | accepts | what it does |\n|---|---|---|---|\n");
        for p in stage.params() {
            let accepts = p.allowed.to_string();
            out.push_str(&format!(
                "| `{}` | `{}` | {} | {} |\n",
                p.key,
                p.default,
                accepts.replace('|', "\\|"),
                p.help.replace('|', "\\|")
            ));
        }
    }
    out
}
