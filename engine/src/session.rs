//! [`Session`]: everything an application needs to run the tool-using agent
//! in a few lines: the model (fetched on first use), a rollout context sized
//! for the agent, the Python sandbox, the chat template and the tool format.
//! GRPO training and evaluation are built on it.
//!
//! ```no_run
//! use cleaner_engine::session::{Session, SessionOptions};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut session = Session::open("qwen2.5-coder-0.5b", SessionOptions::default())?;
//! let t = session.solve("What is 17 * 23 + 4?")?;
//! println!("{} -> {:?}", t.text, t.answer);
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::agent::config::MATH_PROMPT_HERMES;
use crate::agent::prompt;
use crate::agent::{
    Agent, AgentConfig, AgentError, BatchStats, ConfigError, FormatKind, Problem, ToolFormat,
    Trajectory,
};
use crate::assets::{self, AssetError, AssetStore};
use crate::chat::{ChatError, ChatTemplate};
use crate::llama::{LlamaError, LoraAdapter, Model, ModelParams};
use crate::rollout::kv_budget::KvShape;
use crate::rollout::{Decoder, DecoderConfig, RolloutError};
use crate::sandbox::{Sandbox, SandboxConfig, SandboxError};
use crate::tasks::Item;

/// Why a session could not be opened or run.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Fetching the model or the interpreter.
    #[error(transparent)]
    Asset(#[from] AssetError),
    /// llama.cpp (model, adapter).
    #[error(transparent)]
    Llama(#[from] LlamaError),
    /// The rollout engine.
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    /// The chat template.
    #[error(transparent)]
    Chat(#[from] ChatError),
    /// The sandbox.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The agent.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// `SessionOptions::agent` is out of range.
    #[error("invalid agent settings")]
    AgentConfig(#[source] ConfigError),
    /// `SessionOptions::slots` leaves no sequence for rollouts.
    #[error("slots must be at least 2 (one prefills each prompt), got {slots}")]
    TooFewSlots {
        /// The value asked for.
        slots: u32,
    },
    /// The KV cache budget cannot hold one whole trajectory.
    #[error(
        "a KV cache budget of {:.2} GiB holds {cells} cells of {bytes_per_cell} bytes for this \
         model; one trajectory may need {per_sequence} (prompt, response budget and \
         lookaheads): raise the budget or lower max_prompt_tokens / max_response_tokens",
        *bytes as f64 / (1u64 << 30) as f64
    )]
    KvBudgetTooSmall {
        /// The budget in bytes.
        bytes: u64,
        /// Cells it holds.
        cells: u64,
        /// Bytes of one cell (f16 keys and values in every layer).
        bytes_per_cell: u64,
        /// Cells one trajectory may need.
        per_sequence: u64,
    },
    /// The model file lacks the attention shape the KV budget is sized from.
    #[error("sizing the KV cache: {0}")]
    KvShape(#[source] cleaner_models::GgufError),
    /// Prompts longer than the context was sized for.
    #[error(
        "the prompts of problems {} are longer than max_prompt_tokens = {max_prompt_tokens}",
        problems.join(", ")
    )]
    PromptsTooLong {
        /// Ids of the problems whose prompts are too long.
        problems: Vec<String>,
        /// `SessionOptions::max_prompt_tokens`.
        max_prompt_tokens: usize,
    },
}

/// How a session is sized.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Agent settings (tool format, prompts, sampling, limits, purification).
    pub agent: AgentConfig,
    /// Sequences decoded together; one is used to prefill each prompt, so a
    /// group of G rollouts needs G + 1.
    pub slots: u32,
    /// Longest prompt (in tokens) the context is sized for.
    pub max_prompt_tokens: usize,
    /// Memory for the KV cache, in bytes. `None`: room for every slot's
    /// longest trajectory at once (slots x `AgentConfig::cells_per_sequence`),
    /// so no sequence ever waits. With a budget the cache holds what it
    /// allows (never more than that), and sequences beyond it wait for cells
    /// (see `rollout::decoder`).
    pub kv_cache_bytes: Option<u64>,
    /// llama.cpp threads (0: all cores).
    pub threads: i32,
    /// Where assets are cached (None: `$CLEANER_HOME` or `~/.cache/cleaner`).
    pub asset_dir: Option<PathBuf>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            agent: AgentConfig::default(),
            slots: 17,
            max_prompt_tokens: 512,
            kv_cache_bytes: None,
            threads: 0,
            asset_dir: None,
        }
    }
}

/// A loaded model with its rollout engine and sandbox.
pub struct Session {
    model_path: PathBuf,
    model: Arc<Model>,
    decoder: Decoder,
    sandbox: Sandbox,
    template: ChatTemplate,
    format: ToolFormat,
    options: SessionOptions,
}

/// KV cells for a session: slots x the cells one trajectory may need, or
/// what `kv_cache_bytes` holds for this model when that is less.
fn kv_cells(model: &Model, options: &SessionOptions) -> Result<u32, SessionError> {
    let per_sequence = options.agent.cells_per_sequence(options.max_prompt_tokens) as u64;
    let planned = per_sequence.saturating_mul(options.slots as u64);
    let cells = match options.kv_cache_bytes {
        None => planned,
        Some(bytes) => {
            let shape = KvShape::of(model.gguf()).map_err(SessionError::KvShape)?;
            let cells = shape.cells_in(bytes);
            if cells < per_sequence {
                return Err(SessionError::KvBudgetTooSmall {
                    bytes,
                    cells,
                    bytes_per_cell: shape.bytes_per_cell(),
                    per_sequence,
                });
            }
            log::info!(
                "KV cache: {} of the {planned} cells {} slots could fill ({} bytes each); \
                 sequences beyond it wait for cells",
                cells.min(planned),
                options.slots,
                shape.bytes_per_cell()
            );
            cells.min(planned)
        }
    };
    Ok(cells.min(u32::MAX as u64) as u32)
}

impl Session {
    /// Opens `model` (a short name such as `qwen2.5-coder-0.5b`, fetched on
    /// first use, or a GGUF path) and the sandbox (the `python-wasm` asset).
    pub fn open(model: &str, mut options: SessionOptions) -> Result<Session, SessionError> {
        options
            .agent
            .validate()
            .map_err(SessionError::AgentConfig)?;
        if options.slots < 2 {
            return Err(SessionError::TooFewSlots {
                slots: options.slots,
            });
        }
        let store = options
            .asset_dir
            .clone()
            .map(AssetStore::new)
            .unwrap_or_default();
        let mut log = |line: &str| log::info!("{line}");
        let model_path = store.resolve_model(model, &mut log)?;
        let wasm = store.fetch(assets::find("python-wasm")?, &mut log)?;
        let llama = Arc::new(Model::load(&model_path, &ModelParams::default())?);
        let template = ChatTemplate::from_model(&llama)?;
        let format = match options.agent.format {
            FormatKind::Markdown => ToolFormat::markdown(),
            FormatKind::Hermes => {
                if options.agent.user_prompt == crate::agent::config::MATH_PROMPT {
                    options.agent.user_prompt = MATH_PROMPT_HERMES.to_string();
                }
                ToolFormat::hermes(&template)?
            }
        };
        let n_ctx = kv_cells(&llama, &options)?;
        let decoder = Decoder::new(
            llama.clone(),
            &DecoderConfig {
                n_ctx,
                n_seq_max: options.slots,
                n_batch: 512,
                n_threads: options.threads,
                ..Default::default()
            },
        )?;
        let sandbox = Sandbox::new(SandboxConfig::new(wasm, crate::assets::sandbox_cache_dir()))?;
        Ok(Session {
            model_path,
            model: llama,
            decoder,
            sandbox,
            template,
            format,
            options,
        })
    }

    /// The GGUF file the model was loaded from (the trainer maps the same file).
    pub fn model_path(&self) -> &Path {
        &self.model_path
    }
    /// The llama.cpp model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }
    /// The rollout engine.
    pub fn decoder(&mut self) -> &mut Decoder {
        &mut self.decoder
    }
    /// The Python sandbox.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }
    /// The longest prompt (tokens) [`Session::run_problems`] accepts.
    pub fn max_prompt_tokens(&self) -> usize {
        self.options.max_prompt_tokens
    }

    /// Agent settings of later runs.
    pub fn agent_config(&self) -> &AgentConfig {
        &self.options.agent
    }
    /// Changes agent settings (sampling seed, purification) for later runs.
    pub fn agent_config_mut(&mut self) -> &mut AgentConfig {
        &mut self.options.agent
    }

    /// Tokenizes the prompt of each item with the model's chat template.
    pub fn problems(&self, items: &[Item]) -> Result<Vec<Problem>, SessionError> {
        Ok(prompt::problems(
            &self.template,
            &self.model,
            &self.options.agent,
            items,
        )?)
    }

    /// Runs the agent on `items`, `group` rollouts each, all in one
    /// continuous-batching loop. Trajectories come in item order.
    pub fn run(
        &mut self,
        items: &[Item],
        group: usize,
    ) -> Result<(Vec<Trajectory>, BatchStats), SessionError> {
        let problems = self.problems(items)?;
        let seed = self.options.agent.sampling.seed;
        self.run_problems(&problems, group, seed, &mut |_, _| {})
    }

    /// Runs the agent on tokenized problems from rollout seed `seed` (every
    /// rollout's sampling and rollback draws derive from it), reporting
    /// (finished, total) rollouts to `progress`. The session's own agent
    /// settings are not changed.
    pub fn run_problems(
        &mut self,
        problems: &[Problem],
        group: usize,
        seed: u64,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(Vec<Trajectory>, BatchStats), SessionError> {
        let max_prompt_tokens = self.options.max_prompt_tokens;
        let too_long: Vec<String> = problems
            .iter()
            .filter(|p| p.prompt.len() > max_prompt_tokens)
            .map(|p| p.id.clone())
            .collect();
        if !too_long.is_empty() {
            return Err(SessionError::PromptsTooLong {
                problems: too_long,
                max_prompt_tokens,
            });
        }
        let mut config = self.options.agent.clone();
        config.sampling.seed = seed;
        let mut agent = Agent::new(
            &mut self.decoder,
            &self.sandbox,
            self.format.clone(),
            config,
        )?
        .with_progress(progress);
        Ok(agent.run(problems, group)?)
    }

    /// Solves one question with one rollout.
    pub fn solve(&mut self, question: &str) -> Result<Trajectory, SessionError> {
        let item = Item {
            id: "1".into(),
            question: question.into(),
            answer: String::new(),
        };
        let (mut ts, _) = self.run(&[item], 1)?;
        Ok(ts.remove(0))
    }

    /// Samples from a LoRA adapter file (llama.cpp GGUF format) from now on,
    /// or from the base model with `None`.
    pub fn set_adapter(&mut self, adapter: Option<&Path>) -> Result<(), SessionError> {
        let adapter = match adapter {
            Some(path) => Some(LoraAdapter::load(&self.model, path)?),
            None => None,
        };
        self.decoder.set_adapter(adapter)?;
        Ok(())
    }
}
