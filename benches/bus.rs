//! The bus's own cost in one process: calls per second of a request whose handler does nothing,
//! answered on the spot (`answer_now`: on the caller's thread, no mailbox, no task) and on a task
//! of the role's (`handle`, through the actor's mailbox), by 1 and by 64 concurrent callers. What
//! a local role call costs on top of the work it asks for.
//!
//! `cargo bench --bench bus`; calls per case: `GORGON_BENCH_CALLS` (default 400000).

use std::sync::Arc;
use std::time::Instant;

use gorgon::bus::{Bus, BusConfig, Handler, Role, RoleActor, RoleArgs, Service};
use gorgon::error::Result;
use serde::{Deserialize, Serialize};

gorgon::requests! {
    role Stats, call BenchCall;
    /// Answered on the caller's thread.
    Quick => "quick", direct, u64;
    /// Answered on a task of the role's.
    Tasked => "tasked", direct, u64;
}

#[derive(Serialize, Deserialize)]
struct Quick(u64);

#[derive(Serialize, Deserialize)]
struct Tasked(u64);

struct Echo;

impl Service for Echo {
    const ROLE: Role = Role::Stats;
    type Call = BenchCall;
}

impl Handler<Quick> for Echo {
    fn answer_now(&self, r: Quick) -> std::result::Result<Result<u64>, Quick> {
        Ok(Ok(r.0))
    }

    async fn handle(self: Arc<Self>, r: Quick) -> Result<u64> {
        Ok(r.0)
    }
}

impl Handler<Tasked> for Echo {
    async fn handle(self: Arc<Self>, r: Tasked) -> Result<u64> {
        Ok(r.0)
    }
}

async fn run<F, Fut>(label: &str, bus: &Bus, calls: u64, callers: u64, call: F)
where
    F: Fn(Bus, u64) -> Fut + Send + Sync + Copy + 'static,
    Fut: std::future::Future<Output = Result<u64>> + Send,
{
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..callers {
        let bus = bus.clone();
        let share = calls / callers + u64::from(c < calls % callers);
        tasks.push(tokio::spawn(async move {
            for i in 0..share {
                let n = call(bus.clone(), i).await.expect("call");
                assert_eq!(n, i);
            }
        }));
    }
    for task in tasks {
        task.await.expect("caller");
    }
    let rate = calls as f64 / started.elapsed().as_secs_f64();
    println!("  {label:<28} {callers:>2} caller(s): {rate:>10.0} calls/s");
}

fn main() {
    let calls: u64 = std::env::var("GORGON_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let bus = Bus::new(BusConfig::default());
        ractor::Actor::spawn(
            None,
            RoleActor::<Echo>::default(),
            RoleArgs {
                service: Echo,
                bus: bus.clone(),
                concurrency: 1024,
            },
        )
        .await
        .expect("spawn");
        println!("in-process calls through the bus ({calls} per case):");
        for callers in [1, 64] {
            run(
                "answered on the spot",
                &bus,
                calls,
                callers,
                |bus, i| async move { bus.call(Quick(i)).await },
            )
            .await;
            run(
                "answered on a task",
                &bus,
                calls,
                callers,
                |bus, i| async move { bus.call(Tasked(i)).await },
            )
            .await;
        }
    });
}
