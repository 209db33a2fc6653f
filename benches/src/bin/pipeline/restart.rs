//! Restart time and memory: encore-flow started on the schema of a caught-up run, as after a
//! crash, until its first new commit.
//!
//! ```text
//!  caught-up schema (N messages of state) ──► encore-flow (live flags) ──► state rebuilt:
//!     loaded from Postgres (default) or replayed from the topic (--replay-topic)
//!  one marker message sent at the start ──► committed ⇒ the job is live: restart seconds
//!  VmHWM of every process, sampled every 50 ms until then ──► peak RSS of the restart
//! ```
//!
//! The marker lies beyond the stored offsets, and a live epoch commits only once every
//! earlier epoch (the rebuilding ones) is complete, so its commit is the first moment the
//! restarted job serves new messages. The job is then stopped with SIGINT.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};
use encore_benches::{table_header, table_row};
use encore_generator::stream::EventStream;

use crate::flow::{self, FlowTarget, Layout};
use crate::kafka::{BenchProducer, Kafka};
use crate::{gib, pg};

/// One restart.
#[derive(Clone, Debug)]
pub struct Restart {
    /// `load` or `replay`.
    pub mode: &'static str,
    /// Messages of state (committed offsets summed) at the restart.
    pub state_messages: i64,
    /// Seconds from the first spawn to the marker's commit.
    pub first_commit_seconds: f64,
    /// Peak resident set per process until then, bytes.
    pub peak_rss: Vec<u64>,
}

/// Restarts `layout` on `schema` with `args` (plus `--replay-topic` for `mode` "replay"),
/// sends one marker message (the next of `stream`), waits for its commit, stops the job.
#[allow(clippy::too_many_arguments)]
pub fn run(
    target: &FlowTarget,
    layout: Layout,
    schema: &str,
    args: &[String],
    mode: &'static str,
    url: &str,
    kafka: &Kafka,
    stream: &mut EventStream,
    ends: &mut BTreeMap<i32, i64>,
    timeout: Duration,
) -> Result<Restart> {
    let state_messages: i64 = pg::committed(url, schema, &target.topic)?.values().sum();
    let mut args = args.to_vec();
    if mode == "replay" {
        args.push("--replay-topic".to_owned());
    }
    let mut job = flow::start(target, layout, schema, &args, &format!("restart-{mode}-{layout}"))?;
    let marker = Marker { url, schema, kafka, timeout, poll: Duration::from_millis(20) };
    marker.commit(&mut job, &target.topic, stream, ends, |_| {})?;
    let first_commit_seconds = job.elapsed();
    job.check_alive()?; // samples the memory once more
    let peak_rss = job.peaks().to_vec();
    job.interrupt()?;
    if let Err(error) = job.wait(timeout) {
        eprintln!("  warning: the restarted job did not stop cleanly: {error:#}");
    }
    Ok(Restart { mode, state_messages, first_commit_seconds, peak_rss })
}

/// One marker message, sent to a running job and waited for: its commit proves the job live.
pub struct Marker<'a> {
    /// The results database.
    pub url: &'a str,
    /// The job's schema.
    pub schema: &'a str,
    /// The broker.
    pub kafka: &'a Kafka,
    /// Longest wait, counted from the job's start.
    pub timeout: Duration,
    /// Interval of the `encore_progress` polls.
    pub poll: Duration,
}

impl Marker<'_> {
    /// Sends the next message of `stream` to `topic` (growing `ends` by it) and waits until
    /// `job` has committed it; `waiting` runs at every poll.
    pub fn commit(
        &self,
        job: &mut flow::Running,
        topic: &str,
        stream: &mut EventStream,
        ends: &mut BTreeMap<i32, i64>,
        mut waiting: impl FnMut(&mut flow::Running),
    ) -> Result<()> {
        let mut producer = BenchProducer::connect(self.kafka, topic, 1, true)?;
        let mut payload = Vec::with_capacity(512);
        let marker = stream.next_message(&mut payload);
        producer.send(usize::MAX, marker.key(), &payload)?;
        producer.flush()?;
        for (_, partition, offset) in producer.take_landed() {
            let end = ends.entry(partition).or_default();
            *end = (*end).max(offset + 1);
            while pg::committed(self.url, self.schema, topic)?.get(&partition).is_none_or(|c| *c <= offset) {
                job.check_alive()?;
                waiting(job);
                if job.elapsed() > self.timeout.as_secs_f64() {
                    bail!("the marker message was not committed within {} s", self.timeout.as_secs());
                }
                std::thread::sleep(self.poll);
            }
        }
        Ok(())
    }
}

/// The restart table, against the catch-up's peak RSS (the steady state of the same layout).
pub fn print(restarts: &[Restart], steady_rss: &[u64], flags: &[String]) {
    println!(
        "\n## Restart on the caught-up schema (encore-flow {}), to the first new commit\n\n\
         load = the durable state from Postgres (default); replay = the topic from its beginning (--replay-topic). \
         Steady state: the catch-up run's peak RSS per process, {}.\n",
        flags.join(" "),
        steady_rss.iter().map(|b| gib(*b)).collect::<Vec<_>>().join(" + ")
    );
    table_header!(
        "restart",
        "| mode | messages of state | seconds to the first new commit | peak RSS per process | of the steady state's |"
    );
    println!("|---|--:|--:|--:|--:|");
    for restart in restarts {
        let peak: Vec<String> = restart.peak_rss.iter().map(|b| gib(*b)).collect();
        let ratio: Vec<String> = restart
            .peak_rss
            .iter()
            .zip(steady_rss)
            .map(|(peak, steady)| format!("{:.2}×", *peak as f64 / (*steady).max(1) as f64))
            .collect();
        table_row!(
            "restart",
            "| {} | {} | {:.1} | {} | {} |",
            restart.mode,
            restart.state_messages,
            restart.first_commit_seconds,
            peak.join(" + "),
            ratio.join(" + ")
        );
    }
    const RESTART_TARGET: f64 = 15.0;
    for restart in restarts.iter().filter(|r| r.mode == "load") {
        let within = restart.peak_rss.iter().zip(steady_rss).all(|(peak, steady)| peak <= steady);
        println!(
            "restart (load) at {} messages: {:.1} s to the first new commit (target <= {RESTART_TARGET:.0} s: {}); peak RSS <= steady state's: {}",
            restart.state_messages,
            restart.first_commit_seconds,
            if restart.first_commit_seconds <= RESTART_TARGET { "met" } else { "missed" },
            if within { "met" } else { "missed" }
        );
    }
}
