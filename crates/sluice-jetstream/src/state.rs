//! The source's state (plans, the slot's record) in a JetStream key-value bucket beside
//! the log, so an instance on another machine that takes over finds it.
//!
//! Invariants:
//! - A `put` or `remove` returns once JetStream acknowledged it (stored on the bucket's
//!   replicas); a server that does not answer within the timeout is a transient error.
//! - Keys are stored hex-encoded (a table's name may hold any character; a bucket's keys
//!   may not), which keeps prefixes prefixes and the order of keys.
//! - The store is called from synchronous code on any thread, also inside the pipeline's
//!   runtime: each call runs on a thread of the store's own, with its own small runtime
//!   and its own connection (one driven by the caller's runtime could wait behind the
//!   blocked caller for good).

use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::TryStreamExt;
use sluice_core::{ErrorClass, Fault, StateStore, StoreError};

/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

enum Call {
    Get(String),
    Put(String, Bytes),
    Remove(String),
    Scan(String),
}

enum Answer {
    Value(Option<Vec<u8>>),
    Done,
    Rows(Vec<(String, Vec<u8>)>),
}

type Reply = std_mpsc::SyncSender<Result<Answer, StoreError>>;

/// The state in bucket `bucket`.
pub struct KvState {
    bucket: String,
    calls: std::sync::Mutex<std_mpsc::Sender<(Call, Reply)>>,
}

/// Makes the state's own connection, on the state's thread.
pub type Connect = Box<
    dyn FnOnce() -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<async_nats::Client, Fault>> + Send>,
        > + Send,
>;

/// Opens (or creates) the bucket, on a thread and a connection of the state's own: the
/// source calls it synchronously from the pipeline's runtime, and a connection whose
/// task waits behind the blocked caller would never answer.
pub async fn open_state(
    connect: Connect,
    bucket: &str,
    replicas: usize,
    file_storage: bool,
) -> Result<KvState, Fault> {
    let (tx, rx) = std_mpsc::channel::<(Call, Reply)>();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let name = bucket.to_owned();
    std::thread::Builder::new()
        .name("sluice-js-state".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(Fault::from(e).within("the state bucket's runtime")));
                    return;
                }
            };
            let store = rt.block_on(async {
                let client = connect().await?;
                bucket_store(client, &name, replicas, file_storage).await
            });
            match store {
                Ok(store) => {
                    let _ = ready_tx.send(Ok(()));
                    serve(&rt, store, rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| Fault::from(e).within("cannot start the state bucket's thread"))?;
    ready
        .await
        .map_err(|_| Fault::fatal("the state bucket's thread stopped"))??;
    Ok(KvState {
        bucket: bucket.to_owned(),
        calls: std::sync::Mutex::new(tx),
    })
}

/// The bucket, created when missing.
async fn bucket_store(
    client: async_nats::Client,
    bucket: &str,
    replicas: usize,
    file_storage: bool,
) -> Result<kv::Store, Fault> {
    let js = jetstream::new(client);
    if let Ok(s) = js.get_key_value(bucket).await {
        return Ok(s);
    }
    js.create_key_value(kv::Config {
        bucket: bucket.to_owned(),
        description: "Sluice: a pipeline's source state".into(),
        history: 1,
        num_replicas: replicas,
        storage: if file_storage {
            jetstream::stream::StorageType::File
        } else {
            jetstream::stream::StorageType::Memory
        },
        ..Default::default()
    })
    .await
    .map_err(|e| {
        Fault::transient(format!(
            "jetstream log: state bucket {bucket:?} could not be created"
        ))
        .caused_by(e)
    })
}

/// Answers calls until the store is dropped.
fn serve(rt: &tokio::runtime::Runtime, store: kv::Store, rx: std_mpsc::Receiver<(Call, Reply)>) {
    while let Ok((call, reply)) = rx.recv() {
        let answer = rt.block_on(async {
            match tokio::time::timeout(CALL_TIMEOUT, answer(&store, call)).await {
                Ok(a) => a,
                Err(_) => Err(transient("the bucket did not answer in time".into())),
            }
        });
        let _ = reply.send(answer);
    }
}

async fn answer(store: &kv::Store, call: Call) -> Result<Answer, StoreError> {
    Ok(match call {
        Call::Get(k) => Answer::Value(store.get(k).await.map_err(boxed)?.map(|b| b.to_vec())),
        Call::Put(k, v) => {
            store.put(k, v).await.map_err(boxed)?;
            Answer::Done
        }
        Call::Remove(k) => {
            store.purge(k).await.map_err(boxed)?;
            Answer::Done
        }
        Call::Scan(prefix) => {
            let mut keys: Vec<String> = store
                .keys()
                .await
                .map_err(boxed)?
                .try_collect::<Vec<String>>()
                .await
                .map_err(boxed)?
                .into_iter()
                .filter(|k| k.starts_with(&prefix))
                .collect();
            keys.sort();
            let mut rows = Vec::with_capacity(keys.len());
            for k in keys {
                // A key removed between the listing and the read is gone: skipped.
                if let Some(v) = store.get(k.clone()).await.map_err(boxed)? {
                    rows.push((k, v.to_vec()));
                }
            }
            Answer::Rows(rows)
        }
    })
}

fn transient(text: String) -> StoreError {
    StoreError {
        class: ErrorClass::Transient,
        source: text.into(),
    }
}

fn boxed(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError {
        class: ErrorClass::Transient,
        source: Box::new(e),
    }
}

fn hex(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(key: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..key.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(key.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

impl KvState {
    fn call(&self, call: Call) -> Result<Answer, StoreError> {
        let (reply, answer) = std_mpsc::sync_channel(1);
        self.calls
            .lock()
            .expect("state calls lock")
            .send((call, reply))
            .map_err(|_| transient("the state bucket's thread stopped".into()))?;
        answer
            .recv()
            .map_err(|_| transient("the state bucket's thread stopped".into()))?
    }
}

impl StateStore for KvState {
    fn location(&self) -> String {
        format!("JetStream bucket {}", self.bucket)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.call(Call::Get(hex(key)))? {
            Answer::Value(v) => Ok(v),
            _ => Ok(None),
        }
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.call(Call::Put(hex(key), Bytes::copy_from_slice(value)))
            .map(|_| ())
    }

    fn remove(&self, key: &str) -> Result<(), StoreError> {
        self.call(Call::Remove(hex(key))).map(|_| ())
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        match self.call(Call::Scan(hex(prefix)))? {
            Answer::Rows(rows) => Ok(rows
                .into_iter()
                .filter_map(|(k, v)| Some((unhex(&k)?, v)))
                .collect()),
            _ => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_order_and_prefixes() {
        let keys = ["plan/public.a", "plan/public.b", "meta/x", "plan/\"odd\" ü"];
        let mut hexed: Vec<String> = keys.iter().map(|k| hex(k)).collect();
        hexed.sort();
        let back: Vec<String> = hexed.iter().map(|h| unhex(h).unwrap()).collect();
        let mut sorted: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        sorted.sort();
        assert_eq!(back, sorted);
        assert!(hex("plan/public.a").starts_with(&hex("plan/")));
        assert_eq!(unhex("zz"), None);
    }
}
