//! SIMULATED bots: in-process tasks that report `online` shortly after
//! start and stay up until stopped. They connect to nothing. Tests can make
//! a bot crash or be logged out, and observe starts and stops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use trekker_domain::{BotId, ServerName};

use crate::driver::{BotDriver, BotEvent, BotSpec, DriverError, DriverEvent, RunningBot};

/// A misbehaviour to simulate, per phone number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Connect, then exit with code 1 after this long.
    CrashAfter(Duration),
    /// Connect, then report logged out after this long.
    LogOutAfter(Duration),
}

/// Told about every start and stop (tests use it to catch a bot running on
/// two nodes at once).
pub trait RunObserver: Send + Sync {
    fn started(&self, bot: &BotId, node: &ServerName);
    fn stopped(&self, bot: &BotId, node: &ServerName);
}

#[derive(Clone, Default)]
pub struct SimulatedDriver {
    online_after: Duration,
    faults: Arc<Mutex<HashMap<String, Fault>>>,
    observer: Option<Arc<dyn RunObserver>>,
}

impl std::fmt::Debug for SimulatedDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedDriver").field("online_after", &self.online_after).finish_non_exhaustive()
    }
}

impl SimulatedDriver {
    pub fn new(online_after: Duration) -> Self {
        Self { online_after, ..Self::default() }
    }

    pub fn with_observer(mut self, observer: Arc<dyn RunObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Makes every later start of the bot of `phone` misbehave (`None` heals it).
    pub fn set_fault(&self, phone: &str, fault: Option<Fault>) {
        let mut faults = self.faults.lock().expect("fault table");
        match fault {
            Some(fault) => faults.insert(phone.to_owned(), fault),
            None => faults.remove(phone),
        };
    }
}

struct SimulatedBot {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    spec: BotSpec,
    observer: Option<Arc<dyn RunObserver>>,
}

#[async_trait]
impl RunningBot for SimulatedBot {
    async fn stop(self: Box<Self>) {
        let _ = self.stop.send(());
        let _ = self.task.await;
        if let Some(observer) = &self.observer {
            observer.stopped(&self.spec.bot_id, &self.spec.server);
        }
    }
}

#[async_trait]
impl BotDriver for SimulatedDriver {
    fn name(&self) -> &'static str {
        "simulated"
    }

    async fn start(
        &self,
        spec: BotSpec,
        events: mpsc::UnboundedSender<DriverEvent>,
    ) -> Result<Box<dyn RunningBot>, DriverError> {
        if let Some(observer) = &self.observer {
            observer.started(&spec.bot_id, &spec.server);
        }
        let fault = self.faults.lock().expect("fault table").get(spec.phone.as_str()).copied();
        let (stop, mut stopped) = oneshot::channel();
        let online_after = self.online_after;
        let (bot_id, generation) = (spec.bot_id.clone(), spec.generation);
        let task = tokio::spawn(async move {
            let send = |event| {
                let _ = events.send(DriverEvent { bot_id: bot_id.clone(), generation, event });
            };
            tokio::select! {
                _ = &mut stopped => return,
                () = tokio::time::sleep(online_after) => send(BotEvent::Connected),
            }
            match fault {
                None => {
                    let _ = stopped.await;
                }
                Some(Fault::CrashAfter(after)) => tokio::select! {
                    _ = &mut stopped => {}
                    () = tokio::time::sleep(after) => {
                        send(BotEvent::Exited { code: Some(1), signal: None, error: Some("simulated crash".into()) })
                    }
                },
                Some(Fault::LogOutAfter(after)) => tokio::select! {
                    _ = &mut stopped => {}
                    () = tokio::time::sleep(after) => send(BotEvent::LoggedOut { reason: None }),
                },
            }
        });
        Ok(Box::new(SimulatedBot { stop, task, spec, observer: self.observer.clone() }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::driver::test_spec;

    #[derive(Default)]
    struct Watch(Mutex<Vec<String>>);

    impl RunObserver for Watch {
        fn started(&self, bot: &BotId, node: &ServerName) {
            self.0.lock().unwrap().push(format!("start {bot} on {node}"));
        }
        fn stopped(&self, bot: &BotId, node: &ServerName) {
            self.0.lock().unwrap().push(format!("stop {bot} on {node}"));
        }
    }

    /// Each fault shows as the event it stands for; a healed phone runs on;
    /// the observer sees every start and stop.
    #[tokio::test(start_paused = true)]
    async fn faults_become_events_and_runs_are_observed() {
        let watch = Arc::new(Watch::default());
        let driver = SimulatedDriver::new(Duration::from_millis(10)).with_observer(watch.clone());
        assert_eq!(driver.name(), "simulated");
        let phone = "254700000880";
        let cases = [
            (Some(Fault::LogOutAfter(Duration::from_secs(1))), Some(BotEvent::LoggedOut { reason: None })),
            (
                Some(Fault::CrashAfter(Duration::from_secs(1))),
                Some(BotEvent::Exited { code: Some(1), signal: None, error: Some("simulated crash".into()) }),
            ),
            (None, None),
        ];
        for (fault, expected) in cases {
            driver.set_fault(phone, fault);
            let (events, mut received) = mpsc::unbounded_channel();
            let running = driver.start(test_spec("bot-sim", phone, 1, None), events).await.unwrap();
            assert_eq!(received.recv().await.unwrap().event, BotEvent::Connected);
            let next = tokio::time::timeout(Duration::from_secs(60), received.recv()).await.ok().flatten();
            assert_eq!(next.map(|e| e.event), expected, "{fault:?}");
            running.stop().await;
        }
        let seen = watch.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 6, "{seen:?}");
        assert_eq!(seen[0], "start bot-sim on SERVER3");
        assert_eq!(seen[1], "stop bot-sim on SERVER3");
    }
}
