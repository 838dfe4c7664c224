//! Starting and stopping the agent's actors (mini-redis's `server::run` is the model).
//!
//! Each long-running part of the agent is an actor: a module with a `spawn(settings, inputs,
//! shutdown) -> Actor` that runs until the [`Shutdown`] it was given is set. The async ones are
//! tokio tasks; the kernel's (the reactor, the conntrack event reader, the table sampler) are
//! plain threads, so that a million-entry dump never blocks an async worker. The [`Supervisor`]
//! owns them all: [`Supervisor::run_until`] waits for the shutdown signal (or for an actor that
//! ended on its own — the agent then exits with its error and the DaemonSet restarts it), sets
//! the shutdown, and joins every actor within a deadline, naming any that did not stop.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

/// The shutdown signal as the actors see it: cheap to clone, checked without blocking by the
/// threads (`is_set`) and awaited by the tasks (`wait`).
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Whether the agent is stopping.
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the agent is stopping (at once if it already is).
    pub async fn wait(&mut self) {
        // An error means the sender is gone: that, too, is a shutdown.
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Sets the shutdown for every [`Shutdown`] made from it.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

impl Default for Trigger {
    fn default() -> Self {
        Trigger::new()
    }
}

impl Trigger {
    pub fn new() -> Trigger {
        Trigger(watch::channel(false).0)
    }

    /// A signal to hand to an actor.
    pub fn shutdown(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }

    /// Asks every actor holding a signal of this trigger to stop.
    pub fn set(&self) {
        self.0.send_replace(true);
    }
}

/// How an actor's end is awaited.
enum Handle {
    Task(tokio::task::JoinHandle<anyhow::Result<()>>),
    /// A thread sends its result when it returns (a thread cannot be awaited).
    Thread(oneshot::Receiver<anyhow::Result<()>>),
}

/// One running actor, named for the logs.
pub struct Actor {
    name: &'static str,
    handle: Handle,
    /// It may end before the shutdown without stopping the agent ([`Actor::may_end_alone`]).
    optional: bool,
}

impl std::fmt::Debug for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actor").field("name", &self.name).finish()
    }
}

impl Actor {
    /// Runs `work` as a tokio task on the current runtime.
    pub fn task(
        name: &'static str,
        work: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) -> Actor {
        Actor {
            name,
            handle: Handle::Task(tokio::spawn(work)),
            optional: false,
        }
    }

    /// Runs `work` on its own thread, named `gb-<name>`.
    pub fn thread(
        name: &'static str,
        work: impl FnOnce() -> anyhow::Result<()> + Send + 'static,
    ) -> std::io::Result<Actor> {
        let (tx, rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("gb-{name}"))
            .spawn(move || {
                let _ = tx.send(work());
            })?;
        Ok(Actor {
            name,
            handle: Handle::Thread(rx),
            optional: false,
        })
    }

    /// Marks an actor whose end before the shutdown is a designed degradation, not a failure:
    /// the conntrack event reader, whose work the periodic full passes take over.
    pub fn may_end_alone(mut self) -> Actor {
        self.optional = true;
        self
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Waits for the actor to end: `Ok` when it returned `Ok`, the error (or panic) otherwise.
    pub async fn join(self) -> anyhow::Result<()> {
        match self.handle {
            Handle::Task(h) => match h.await {
                Ok(r) => r,
                Err(e) if e.is_panic() => Err(anyhow::anyhow!("panicked")),
                Err(e) => Err(anyhow::anyhow!("cancelled: {e}")),
            },
            Handle::Thread(rx) => rx
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked"))),
        }
    }
}

/// How the actors ended.
#[derive(Debug, Default)]
pub struct Stopped {
    /// Actors that ended with an error (or a panic), with it.
    pub failed: Vec<(&'static str, String)>,
    /// Actors still running at the deadline.
    pub stuck: Vec<&'static str>,
    /// An actor that ended before the shutdown was asked for (the reason the agent stops).
    pub ended_early: Option<(&'static str, String)>,
}

impl Stopped {
    /// Everything stopped in time, cleanly, and only when asked.
    pub fn is_clean(&self) -> bool {
        self.failed.is_empty() && self.stuck.is_empty() && self.ended_early.is_none()
    }
}

/// Owns the actors and the shutdown signal they were given.
pub struct Supervisor {
    trigger: Trigger,
    actors: Vec<Actor>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor::new()
    }
}

impl Supervisor {
    pub fn new() -> Supervisor {
        Supervisor {
            trigger: Trigger::new(),
            actors: Vec::new(),
        }
    }

    /// The signal to hand to an actor at its spawn.
    pub fn shutdown(&self) -> Shutdown {
        self.trigger.shutdown()
    }

    /// Takes an actor under supervision.
    pub fn add(&mut self, actor: Actor) {
        self.actors.push(actor);
    }

    /// Names of the actors supervised, in start order.
    pub fn names(&self) -> Vec<&'static str> {
        self.actors.iter().map(Actor::name).collect()
    }

    /// Runs until `signal` resolves or an actor ends on its own, then stops every actor and joins
    /// them within `deadline`.
    pub async fn run_until(
        mut self,
        signal: impl Future<Output = ()>,
        deadline: Duration,
    ) -> Stopped {
        let (ended_tx, mut ended_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut waiting = Vec::new();
        let mut optional = Vec::new();
        for actor in std::mem::take(&mut self.actors) {
            let tx = ended_tx.clone();
            let name = actor.name;
            waiting.push(name);
            if actor.optional {
                optional.push(name);
            }
            tokio::spawn(async move {
                let _ = tx.send((name, actor.join().await));
            });
        }
        drop(ended_tx);
        let mut stopped = Stopped::default();
        let mut ended = Vec::new();
        tokio::pin!(signal);
        loop {
            tokio::select! {
                _ = &mut signal => break,
                Some((name, result)) = ended_rx.recv() => {
                    let why = match &result {
                        Ok(()) => "ended".to_string(),
                        Err(e) => format!("{e:#}"),
                    };
                    ended.push((name, result));
                    if optional.contains(&name) {
                        tracing::info!(actor = name, why = %why, "an optional actor ended; the agent goes on without it");
                        continue;
                    }
                    tracing::error!(actor = name, error = %why, "an actor of the agent ended on its own: stopping");
                    stopped.ended_early = Some((name, why));
                    break;
                }
            }
        }
        self.trigger.set();
        let all_ended = async {
            while ended.len() < waiting.len() {
                match ended_rx.recv().await {
                    Some(e) => ended.push(e),
                    None => break,
                }
            }
        };
        let _ = tokio::time::timeout(deadline, all_ended).await;
        for name in &waiting {
            match ended.iter().find(|(n, _)| n == name) {
                None => stopped.stuck.push(name),
                Some((_, Err(e))) => stopped.failed.push((name, format!("{e:#}"))),
                Some((_, Ok(()))) => {}
            }
        }
        for name in &stopped.stuck {
            tracing::error!(
                actor = name,
                deadline_ms = deadline.as_millis() as u64,
                "did not stop in time"
            );
        }
        for (name, e) in &stopped.failed {
            tracing::warn!(actor = name, error = %e, "ended with an error");
        }
        stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    /// Tasks and threads that watch their shutdown are stopped and joined; the one that ignores
    /// it is named at the deadline.
    #[test]
    fn a_shutdown_stops_and_joins_every_actor_and_names_the_one_that_did_not_stop() {
        rt().block_on(async {
            let mut s = Supervisor::new();
            let mut sd = s.shutdown();
            s.add(Actor::task("watch", async move {
                sd.wait().await;
                Ok(())
            }));
            let sd = s.shutdown();
            let thread_saw_it = Arc::new(AtomicBool::new(false));
            let seen = thread_saw_it.clone();
            s.add(
                Actor::thread("reactor", move || {
                    while !sd.is_set() {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    seen.store(true, Ordering::SeqCst);
                    Ok(())
                })
                .unwrap(),
            );
            s.add(Actor::task("stubborn", async {
                std::future::pending::<()>().await;
                Ok(())
            }));
            assert_eq!(s.names(), ["watch", "reactor", "stubborn"]);
            let (tx, rx) = oneshot::channel::<()>();
            tx.send(()).unwrap();
            let stopped = s
                .run_until(
                    async {
                        let _ = rx.await;
                    },
                    Duration::from_millis(300),
                )
                .await;
            assert!(thread_saw_it.load(Ordering::SeqCst));
            assert_eq!(stopped.stuck, ["stubborn"]);
            assert!(stopped.failed.is_empty());
            assert!(stopped.ended_early.is_none());
            assert!(!stopped.is_clean());
        });
    }

    /// An actor that ends on its own (its error, or a panic) stops the agent: the others are
    /// stopped and joined, and the one that ended is reported as the reason.
    #[test]
    fn an_actor_that_ends_on_its_own_stops_the_others() {
        rt().block_on(async {
            let mut s = Supervisor::new();
            let mut sd = s.shutdown();
            s.add(Actor::task("admin", async move {
                sd.wait().await;
                Ok(())
            }));
            s.add(Actor::task("watch", async {
                Err(anyhow::anyhow!("the API client is gone"))
            }));
            s.add(Actor::thread("table", || panic!("boom")).unwrap());
            let stopped = s
                .run_until(std::future::pending(), Duration::from_secs(5))
                .await;
            let (name, why) = stopped.ended_early.clone().expect("ended early");
            assert!(
                (name == "watch" && why.contains("API client"))
                    || (name == "table" && why == "panicked"),
                "{stopped:?}"
            );
            assert!(stopped.stuck.is_empty(), "{stopped:?}");
            assert_eq!(stopped.failed.len(), 2, "{stopped:?}");
        });
    }

    /// An optional actor (the conntrack event reader: periodic passes take over its work) may
    /// end alone; the agent goes on until the signal.
    #[test]
    fn an_optional_actor_may_end_alone() {
        rt().block_on(async {
            let mut s = Supervisor::new();
            let mut sd = s.shutdown();
            s.add(Actor::task("reactor", async move {
                sd.wait().await;
                Ok(())
            }));
            s.add(
                Actor::thread("ct-events", || Ok(()))
                    .unwrap()
                    .may_end_alone(),
            );
            let (tx, rx) = oneshot::channel::<()>();
            let signal = async move {
                // The optional actor ends first; the signal comes later.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = tx.send(());
            };
            tokio::spawn(signal);
            let stopped = s
                .run_until(
                    async {
                        let _ = rx.await;
                    },
                    Duration::from_secs(5),
                )
                .await;
            assert!(stopped.is_clean(), "{stopped:?}");
        });
    }

    #[test]
    fn a_shutdown_is_seen_by_late_subscribers() {
        rt().block_on(async {
            let s = Supervisor::new();
            let mut early = s.shutdown();
            s.trigger.set();
            let mut late = s.shutdown();
            early.wait().await;
            late.wait().await;
            assert!(late.is_set());
        });
    }
}
