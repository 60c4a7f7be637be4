//! The command line: what to run and how long.

/// The text of `--help`; the README's "Benchmarks" section lists the same options.
pub const HELP: &str = "\
idem-bench: idem's stores against their raw clients, as ratios measured in one run

USAGE:
    cargo run --release -p idem-bench -- [OPTIONS]

OPTIONS:
    --backends LIST   comma-separated sections to run, in this order
                      (memory, redis, valkey: the Redis store on Valkey 8.1, which
                      finishes with SET IFEQ, mysql, postgres, redis+cache: the replay
                      cache in front of Redis, http: an axum handler behind the layer
                      on memory, Redis and Redis behind the replay cache, served by a
                      child process of this binary, amqp / nats:
                      idem-consumer's consume loop on RabbitMQ / NATS JetStream with
                      the Redis store, against the same loop doing the raw Redis
                      protocol per message, and the same loop acking without a store)
                      [default: memory,redis,valkey,mysql,postgres,redis+cache,http,amqp,
                      nats]
    --ops N           operations per latency measurement; throughput uses 4N, and
                      more where one operation takes microseconds (memory 64N;
                      redis, valkey, redis+cache 16N), so those rows last long
                      enough to be steady
                      [default: 2000, at least 100]
    --rounds R        rounds; every figure is the median over them [default: 3]
    --tasks T         concurrent tasks of the throughput rows, and messages in flight
                      of the consumer rows [default: 64, at least 2]
    --records N       completed records of the memory footprint; 0 skips it
                      [default: 1000000]
    -h, --help        print this and exit

Each row times idem and its floor (the raw client doing the same steps) in turns, at one
task (p50/p99 latency, timed inside a spawned task) and at T tasks (ops/s). The consumer
rows (amqp, nats) are messages/s only: 4N fresh messages per side (idem, the raw
protocol's floor, the bare loop, taking slices in turns), each slice in a queue or
stream of its own that is deleted afterwards. The exit code is 1 when a row misses its
target, 2 on a bad option.
";

/// What to run, from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Operations per latency measurement (throughput uses four times as many).
    pub ops: usize,
    /// Rounds; figures are medians over them.
    pub rounds: usize,
    /// Concurrent tasks of the throughput rows.
    pub tasks: usize,
    /// The sections to run, by name.
    pub backends: Vec<String>,
    /// Completed records of the memory footprint (0 skips it).
    pub records: usize,
    /// How many times more operations a throughput row times than 4 × `ops`: set per
    /// section (see `BenchBackend::THROUGHPUT_SCALE`), not on the command line.
    pub throughput_scale: usize,
    /// Internal: measure one footprint in this process and print it (`idem` or `raw`).
    pub footprint_of: Option<String>,
    /// Internal: serve the HTTP rows' servers on this store (`memory` or `redis`) until
    /// standard input closes; the HTTP section runs this binary so in a child process.
    pub serve_http: Option<String>,
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Command {
    /// Run the benchmark.
    Run(Settings),
    /// Print [`HELP`].
    Help,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            ops: 2000,
            rounds: 3,
            tasks: 64,
            backends: [
                "memory",
                "redis",
                "valkey",
                "mysql",
                "postgres",
                "redis+cache",
                "http",
                "amqp",
                "nats",
            ]
            .map(String::from)
            .to_vec(),
            records: 1_000_000,
            throughput_scale: 1,
            footprint_of: None,
            serve_http: None,
        }
    }
}

impl Settings {
    /// Parses `args` (without the program name).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
        let mut settings = Settings::default();
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            if flag == "-h" || flag == "--help" {
                return Ok(Command::Help);
            }
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let number = || {
                value
                    .parse::<usize>()
                    .map_err(|e| format!("{flag} {value}: {e}"))
            };
            match flag.as_str() {
                "--ops" => settings.ops = number()?.max(100),
                "--rounds" => settings.rounds = number()?.max(1),
                "--tasks" => settings.tasks = number()?.max(2),
                "--records" => settings.records = number()?,
                "--backends" => settings.backends = value.split(',').map(str::to_owned).collect(),
                "--footprint-of" => settings.footprint_of = Some(value),
                "--serve-http" => settings.serve_http = Some(value),
                other => return Err(format!("unknown option {other} (see --help)")),
            }
        }
        Ok(Command::Run(settings))
    }

    /// Whether the section `name` was asked for.
    pub fn wants(&self, name: &str) -> bool {
        self.backends.iter().any(|b| b == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        Settings::parse(args.iter().map(|a| (*a).to_owned()))
    }

    #[test]
    fn help_is_not_an_error() {
        assert!(matches!(parse(&["--help"]), Ok(Command::Help)));
        assert!(matches!(parse(&["--ops", "500", "-h"]), Ok(Command::Help)));
    }

    #[test]
    fn options_are_read_and_unknown_ones_refused() {
        let Ok(Command::Run(settings)) = parse(&["--ops", "500", "--backends", "redis,mysql"])
        else {
            panic!("a valid command line was refused");
        };
        assert_eq!(settings.ops, 500);
        assert_eq!(settings.backends, ["redis", "mysql"]);
        assert!(parse(&["--speed", "9"]).is_err());
        assert!(parse(&["--ops"]).is_err());
        assert!(parse(&["--ops", "many"]).is_err());
    }
}
