//! Writes a synthetic run for the audit benchmark: `synth_run DIR TRAJECTORIES [frozen|healthy]`.
//! Three rounds; four policy attempts and one generator trajectory per task, 64 completion
//! tokens each, so TRAJECTORIES / 15 tasks per round.

use asl::audit::synthetic::{Pattern, SyntheticRun};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, n, rest @ ..] = args.as_slice() else {
        eprintln!("usage: synth_run DIR TRAJECTORIES [frozen|healthy]");
        std::process::exit(2);
    };
    let total: usize = n.parse().expect("TRAJECTORIES is a number");
    let pattern = match rest.first().map(String::as_str) {
        Some("healthy") => Pattern::Healthy,
        _ => Pattern::FrozenJudge,
    };
    let rounds = 3;
    let attempts = 4;
    let run = SyntheticRun {
        rounds,
        tasks_per_round: (total / (rounds as usize * (attempts as usize + 1))).max(1),
        attempts,
        tokens: 64,
        pattern,
        seed: 1,
    };
    let written = run
        .write(std::path::Path::new(dir))
        .expect("synthetic run written");
    println!("{written}");
}
