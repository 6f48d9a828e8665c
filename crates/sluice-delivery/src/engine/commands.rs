//! The operator's commands (redrive, skip, redrive dead letters), carried out by the
//! engine that owns the sink's state, so they take effect between deliveries and keep
//! each key's order: released records go before the key's newer ones.

use tracing::info;

use super::*;

impl<T: Target> Engine<T> {
    fn selected(&self, sel: &Selection, states: &[KeyState]) -> Vec<Box<str>> {
        match sel {
            Selection::All => self
                .keys
                .iter()
                .filter(|(_, key)| {
                    key.held && !key.draining && key.row.is_some_and(|s| states.contains(&s))
                })
                .map(|(k, _)| k.clone())
                .collect(),
            Selection::Keys(keys) => keys.iter().map(|k| k.as_str().into()).collect(),
        }
    }

    pub(super) fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Redrive(sel, reply) => {
                let keys = self.selected(&sel, &[KeyState::Parked, KeyState::Delayed]);
                let mut n = 0;
                let mut result = Ok(());
                for k in keys {
                    let held = self
                        .keys
                        .get(&k)
                        .is_some_and(|key| key.held && !key.draining);
                    if held {
                        if let Err(e) = self.release(&k) {
                            result = Err(e);
                            break;
                        }
                        n += 1;
                    }
                }
                info!(sink = %self.name, keys = n, "sink: keys redriven from the waiting room");
                let _ = reply.send(result.map(|()| n));
            }
            Command::Skip(sel, reply) => {
                let keys = self.selected(&sel, &[KeyState::Parked]);
                let mut n = 0;
                let mut result = Ok(());
                for k in keys {
                    match self.skip(&k) {
                        Ok(m) => n += m,
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                info!(sink = %self.name, records = n, "sink: parked records skipped into the dead letters");
                let _ = reply.send(result.map(|()| n));
            }
            Command::RedriveDead(offsets, reply) => {
                let _ = reply.send(self.redrive_dead(offsets));
            }
        }
    }

    /// Puts dead letters back in their keys' queues (behind what the key has now).
    fn redrive_dead(&mut self, offsets: Option<Vec<u64>>) -> Result<usize, DeliveryError> {
        let letters = match offsets {
            None => self.store.dead(0, usize::MAX)?,
            Some(list) => {
                let mut out = Vec::new();
                for o in list {
                    out.extend(
                        self.store
                            .dead(o, 1)?
                            .into_iter()
                            .filter(|s| s.item.offset == o),
                    );
                }
                out
            }
        };
        let n = letters.len();
        let now = self.clock.micros();
        for s in letters {
            let k = s.item.key.clone();
            let key = self.keys.entry(k.clone()).or_default();
            if key.held && !key.draining {
                let mut s = s;
                s.reason.clear();
                s.at_micros = now;
                let offset = s.item.offset;
                self.store
                    .apply(&[Change::PutWaiting(s), Change::DelDead(offset)], true)?;
                continue;
            }
            key.queue.push_back(Entry::new(s.item, Origin::Dead));
            if key.queue.len() == 1 {
                self.consider(&k);
            }
        }
        info!(sink = %self.name, records = n, "sink: dead letters redriven");
        Ok(n)
    }

    /// Moves a parked key's stored records to the dead letters; the key flows again.
    fn skip(&mut self, k: &str) -> Result<usize, DeliveryError> {
        let Some(key) = self.keys.get(k) else {
            return Ok(0);
        };
        if key.row != Some(KeyState::Parked) {
            return Ok(0);
        }
        let now = self.clock.micros();
        let mut n = 0;
        loop {
            let page = self.store.waiting(k, 0, PAGE)?;
            if page.is_empty() {
                break;
            }
            let mut changes = Vec::with_capacity(page.len() * 2);
            for mut s in page {
                n += 1;
                changes.push(Change::DelWaiting(s.item.key.clone(), s.item.offset));
                s.reason = "skipped".into();
                s.at_micros = now;
                changes.push(Change::PutDead(s));
            }
            self.store.apply(&changes, true)?;
        }
        self.m.parked.decrement(1.0);
        let key = self.keys.get_mut(k).expect("looked up above");
        key.held = false;
        key.draining = false;
        key.row = Some(KeyState::Done);
        if let Some(row) = self.row_of(k)? {
            self.store.apply(
                &[Change::PutKey(
                    k.into(),
                    KeyRow {
                        state: KeyState::Done,
                        ..row
                    },
                )],
                true,
            )?;
        }
        metrics::counter!(sluice_core::metric::DELIVERY_DEAD_LETTERS.name, "sink" => self.name.clone(), "reason" => "skipped")
            .increment(n as u64);
        self.consider(k);
        Ok(n)
    }
}
