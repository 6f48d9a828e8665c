//! The control plane of `sluice server`: one process, one data dir, many pipelines.
//!
//! - [`registry`]: every pipeline the server runs, from the API or from a configuration
//!   directory, kept in the data dir;
//! - [`sealed`]: the secrets of the registry's configurations, sealed at rest under the
//!   server's secret key;
//! - [`tokens`]: the API's tokens and their scopes, kept as hashes;
//! - [`access`]: the IP allow-lists for management and for consumers;
//! - [`audit`]: the log of management actions;
//! - [`probe`]: checks of a source or a sink before a pipeline exists, and the tables a
//!   source offers;
//! - [`control`]: the loop that runs the registry's pipelines under one supervisor and
//!   applies the API's requests, and the [`Handle`] the API calls it through.
//!
//! The HTTP side (routes, access checks, the OpenAPI document) is `sluice-server`'s.

pub mod access;
pub mod audit;
pub mod control;
mod files;
pub mod probe;
pub mod registry;
pub mod sealed;
pub mod secrets;
pub mod tokens;

pub use control::{ControlError, Controller, FindingView, Handle, PipelineView, RunState};
pub use registry::{Entry, Origin, Registry};
pub use tokens::{Scope, TokenError, TokenInfo, Tokens};
