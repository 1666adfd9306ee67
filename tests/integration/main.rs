//! Integration tests: the `asl` binary and the library on real files. One test binary, a module
//! per topic.

mod audit;
mod bad_input;
mod common;
mod crash;
mod export;
mod full_disk;
mod fuzz;
mod layers;
mod model_cli;
mod page;
mod readers;
mod retention;
mod rounds;
mod runner;
mod search_assets;
mod shards;
mod slurm;
mod steps;
mod tensorboard;
