//! `filesystem.Filesystem` messages (proto package `filesystem`).

use serde::{Deserialize, Serialize};

use crate::json::i64_str;
use crate::proto_enum;

/// Service path prefix, as in `POST /filesystem.Filesystem/Stat`.
pub const SERVICE: &str = "filesystem.Filesystem";

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}
fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

proto_enum!(
    FileType {
        Unspecified = 0 => "FILE_TYPE_UNSPECIFIED",
        File = 1 => "FILE_TYPE_FILE",
        Directory = 2 => "FILE_TYPE_DIRECTORY",
        Symlink = 3 => "FILE_TYPE_SYMLINK",
    }
);

proto_enum!(
    EventType {
        Unspecified = 0 => "EVENT_TYPE_UNSPECIFIED",
        Create = 1 => "EVENT_TYPE_CREATE",
        Write = 2 => "EVENT_TYPE_WRITE",
        Remove = 3 => "EVENT_TYPE_REMOVE",
        Rename = 4 => "EVENT_TYPE_RENAME",
        Chmod = 5 => "EVENT_TYPE_CHMOD",
    }
);

/// A file's description. Fields 1-10 of envd's `EntryInfo`; the later
/// additions (`metadata`, `isSymlink`) are not emitted because SDKs up to
/// 2.34 parse JSON strictly and reject unknown keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EntryInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub file_type: FileType,
    pub path: String,
    #[serde(with = "i64_str", skip_serializing_if = "is_zero_i64")]
    pub size: i64,
    /// Go `os.FileMode` bits: permission bits plus type bits (directory = 1 << 31).
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub mode: u32,
    /// Go `os.FileMode.String()`, e.g. `-rw-r--r--` or `drwxr-xr-x`.
    pub permissions: String,
    pub owner: String,
    pub group: String,
    #[serde(skip_serializing_if = "Option::is_none", alias = "modified_time")]
    pub modified_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", alias = "symlink_target")]
    pub symlink_target: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PathRequest {
    pub path: String,
}
pub type StatRequest = PathRequest;
pub type MakeDirRequest = PathRequest;
pub type RemoveRequest = PathRequest;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EntryResponse {
    pub entry: EntryInfo,
}
pub type StatResponse = EntryResponse;
pub type MakeDirResponse = EntryResponse;
pub type MoveResponse = EntryResponse;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MoveRequest {
    pub source: String,
    pub destination: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListDirRequest {
    pub path: String,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub depth: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListDirResponse {
    pub entries: Vec<EntryInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WatchDirRequest {
    pub path: String,
    #[serde(skip_serializing_if = "is_false")]
    pub recursive: bool,
    #[serde(skip_serializing_if = "is_false", alias = "include_entry")]
    pub include_entry: bool,
    #[serde(skip_serializing_if = "is_false", alias = "allow_network_mounts")]
    pub allow_network_mounts: bool,
}
pub type CreateWatcherRequest = WatchDirRequest;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FilesystemEvent {
    /// Path relative to the watched directory.
    pub name: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// One message of the WatchDir stream (oneof `event`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WatchDirResponse {
    Start(Empty),
    Filesystem(FilesystemEvent),
    Keepalive(Empty),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WatcherId {
    #[serde(alias = "watcher_id")]
    pub watcher_id: String,
}
pub type CreateWatcherResponse = WatcherId;
pub type GetWatcherEventsRequest = WatcherId;
pub type RemoveWatcherRequest = WatcherId;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GetWatcherEventsResponse {
    pub events: Vec<FilesystemEvent>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entry_info_wire_names() {
        let e = EntryInfo {
            name: "a".into(),
            file_type: FileType::Directory,
            path: "/a".into(),
            size: 4096,
            mode: 2_147_484_141,
            permissions: "drwxr-xr-x".into(),
            owner: "user".into(),
            group: "user".into(),
            modified_time: Some("2026-11-28T00:00:00Z".into()),
            symlink_target: None,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "FILE_TYPE_DIRECTORY");
        assert_eq!(v["size"], "4096");
        assert_eq!(v["modifiedTime"], "2026-11-28T00:00:00Z");
        assert!(v.get("symlinkTarget").is_none());
        let back: EntryInfo = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
        // Numbers, enum numbers and snake_case are accepted on input.
        let alt: EntryInfo =
            serde_json::from_value(json!({"type": 1, "size": 7, "modified_time": "x", "symlink_target": "/t"}))
                .unwrap();
        assert_eq!(alt.file_type, FileType::File);
        assert_eq!(alt.size, 7);
        assert_eq!(alt.symlink_target.as_deref(), Some("/t"));
    }

    #[test]
    fn watch_stream_messages() {
        let s = serde_json::to_string(&WatchDirResponse::Start(Empty {})).unwrap();
        assert_eq!(s, r#"{"start":{}}"#);
        let f = WatchDirResponse::Filesystem(FilesystemEvent { name: "x/y".into(), event_type: EventType::Write });
        assert_eq!(serde_json::to_string(&f).unwrap(), r#"{"filesystem":{"name":"x/y","type":"EVENT_TYPE_WRITE"}}"#);
        let w: WatcherId = serde_json::from_value(json!({"watcherId": "w1"})).unwrap();
        assert_eq!(w.watcher_id, "w1");
    }
}
