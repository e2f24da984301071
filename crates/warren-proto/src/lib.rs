//! The envd-compatible agent protocol.
//!
//! warren's in-workspace agent speaks the same wire protocol as E2B's `envd`
//! (Connect RPC with the JSON codec, plus a few plain HTTP endpoints), so that
//! unmodified E2B SDKs work through a pass-through gateway. This crate holds:
//!
//! - [`process`] and [`filesystem`]: the RPC messages, with proto3-JSON field
//!   names and encodings (base64 bytes, enum names, int64 as strings);
//! - [`connect`]: Connect framing (5-byte envelopes, end-of-stream frame, error
//!   codes and their HTTP statuses, content types);
//! - [`http`]: the non-RPC endpoints' shapes (`/files`, `/health`, `/init`);
//! - [`client`] (feature `client`): the typed agent client used by the
//!   orchestrator, the CLI, the tests and the benchmarks.
//!
//! The wire contract is written down in `shared/specs/e2b-compat.md` §3.

pub mod connect;
pub mod endpoint;
pub mod filesystem;
pub mod http;
pub mod json;
pub mod process;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod tls;

/// The envd version the agent advertises. 0.5.7 turns on raw octet-stream
/// uploads in the SDK; metadata and watch extras (0.6.x) are not implemented.
pub const ENVD_VERSION: &str = "0.5.7";

/// The TCP port the agent listens on by default, fixed by the E2B SDK.
pub const DEFAULT_PORT: u16 = 49983;

/// Header that carries the per-workspace access token.
pub const ACCESS_TOKEN_HEADER: &str = "x-access-token";

/// Header that carries the bootstrap secret on `POST /init`.
pub const INIT_TOKEN_HEADER: &str = "x-warren-init-token";

/// Header asking the agent to proxy the request to this port inside the
/// workspace (gateway use; needs the init token).
pub const FORWARD_PORT_HEADER: &str = "x-warren-forward-port";
