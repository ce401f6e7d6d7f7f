//! The OpenAI chat-message schema a devshard prompt must follow: upstream's
//! `validateOpenAICompatRequestMap` (`decentralized-api/completionapi/request_validation.go`).
//!
//! Upstream then runs `validateMessageContents` as well; every message it refuses is already
//! refused here (content is checked at least as strictly for every role), so it is not repeated.
//! Strings are trimmed of Unicode white space, as Go's `strings.TrimSpace` trims them.

use std::collections::HashSet;

use serde_json::{Map, Value};

type Object = Map<String, Value>;

/// Checks the request's `messages`, if it has the key. The error says which field is wrong.
pub(super) fn check(request: &Object) -> Result<(), String> {
    let Some(messages) = request.get("messages") else {
        return Ok(());
    };
    let Value::Array(messages) = messages else {
        return Err("messages must be an array".into());
    };
    let mut pending_tool_calls: HashSet<&str> = HashSet::new();
    for (i, message) in messages.iter().enumerate() {
        let Value::Object(message) = message else {
            return Err(format!("messages[{i}] must be an object"));
        };
        let role =
            required_string(message, "role").map_err(|err| format!("messages[{i}].role: {err}"))?;
        let content_error = |err: String| format!("messages[{i}].content: {err}");
        let message_error = |err: String| format!("messages[{i}]: {err}");
        match role {
            "developer" | "system" | "user" => {
                absent(message, &["tool_calls", "tool_call_id", "function_call"])
                    .map_err(message_error)?;
                required_content(message).map_err(content_error)?;
            }
            "assistant" => {
                absent(message, &["tool_call_id"]).map_err(message_error)?;
                let tool_calls = tool_calls(message, i)?;
                let has_function_call = function_call(message, i)?;
                let may_be_empty = tool_calls.is_some() || has_function_call;
                assistant_content(message, may_be_empty).map_err(content_error)?;
                pending_tool_calls.extend(tool_calls.into_iter().flatten());
            }
            "tool" => {
                absent(message, &["tool_calls", "function_call", "name"]).map_err(message_error)?;
                let id = required_string(message, "tool_call_id")
                    .map_err(|err| format!("messages[{i}].tool_call_id: {err}"))?;
                if !pending_tool_calls.remove(id) {
                    return Err(format!(
                        "messages[{i}].tool_call_id does not match any previous assistant tool_calls"
                    ));
                }
                required_content(message).map_err(content_error)?;
            }
            "function" => {
                absent(message, &["tool_calls", "tool_call_id", "function_call"])
                    .map_err(message_error)?;
                required_string(message, "name")
                    .map_err(|err| format!("messages[{i}].name: {err}"))?;
                required_content(message).map_err(content_error)?;
            }
            other => return Err(format!("messages[{i}].role has unsupported value {other:?}")),
        }
    }
    Ok(())
}

/// An assistant message's `tool_calls`: `None` without the key, else the call ids (a present key
/// must hold a non-empty array of function calls with distinct ids).
fn tool_calls(message: &Object, i: usize) -> Result<Option<Vec<&str>>, String> {
    let Some(calls) = message.get("tool_calls") else {
        return Ok(None);
    };
    let Value::Array(calls) = calls else {
        return Err(format!("messages[{i}].tool_calls must be an array"));
    };
    if calls.is_empty() {
        return Err(format!("messages[{i}].tool_calls must not be empty"));
    }
    let mut ids = Vec::with_capacity(calls.len());
    for (j, call) in calls.iter().enumerate() {
        let at = format!("messages[{i}].tool_calls[{j}]");
        let Value::Object(call) = call else {
            return Err(format!("{at} must be an object"));
        };
        let id = required_string(call, "id").map_err(|err| format!("{at}.id: {err}"))?;
        if ids.contains(&id) {
            return Err(format!("{at}.id is duplicated"));
        }
        ids.push(id);
        let kind = required_string(call, "type").map_err(|err| format!("{at}.type: {err}"))?;
        if kind != "function" {
            return Err(format!("{at}.type must be \"function\""));
        }
        let function = match call.get("function") {
            None | Some(Value::Null) => return Err(format!("{at}.function is required")),
            Some(Value::Object(function)) => function,
            Some(_) => return Err(format!("{at}.function must be an object")),
        };
        required_string(function, "name").map_err(|err| format!("{at}.function.name: {err}"))?;
        optional_string(function, "arguments")
            .map_err(|err| format!("{at}.function.arguments: {err}"))?;
    }
    Ok(Some(ids))
}

/// Whether an assistant message has a `function_call`; a present one must be an object with a
/// name.
fn function_call(message: &Object, i: usize) -> Result<bool, String> {
    let call = match message.get("function_call") {
        None => return Ok(false),
        Some(Value::Object(call)) => call,
        Some(_) => return Err(format!("messages[{i}].function_call must be an object")),
    };
    required_string(call, "name")
        .map_err(|err| format!("messages[{i}].function_call.name: {err}"))?;
    optional_string(call, "arguments")
        .map_err(|err| format!("messages[{i}].function_call.arguments: {err}"))?;
    Ok(true)
}

fn assistant_content(message: &Object, may_be_empty: bool) -> Result<(), String> {
    match message.get("content") {
        None | Some(Value::Null) if may_be_empty => Ok(()),
        None | Some(Value::Null) => {
            Err("is required unless tool_calls or function_call is provided".into())
        }
        Some(content) => non_empty_content(content),
    }
}

fn required_content(message: &Object) -> Result<(), String> {
    match message.get("content") {
        None | Some(Value::Null) => Err("is required".into()),
        Some(content) => non_empty_content(content),
    }
}

/// A non-blank string, or a non-empty array of typed parts where a `text` part has non-blank
/// text. Parts of other types are not looked into.
fn non_empty_content(content: &Value) -> Result<(), String> {
    match content {
        Value::String(text) if text.trim().is_empty() => Err("must not be empty".into()),
        Value::String(_) => Ok(()),
        Value::Array(parts) if parts.is_empty() => Err("must not be empty".into()),
        Value::Array(parts) => {
            for (j, part) in parts.iter().enumerate() {
                let Value::Object(part) = part else {
                    return Err(format!("[{j}] must be an object"));
                };
                let kind =
                    required_string(part, "type").map_err(|err| format!("[{j}].type: {err}"))?;
                if kind == "text" {
                    required_string(part, "text").map_err(|err| format!("[{j}].text: {err}"))?;
                }
            }
            Ok(())
        }
        _ => Err("must be a string or an array of typed content parts".into()),
    }
}

fn absent(message: &Object, fields: &[&str]) -> Result<(), String> {
    match fields.iter().find(|field| message.contains_key(**field)) {
        Some(field) => Err(format!("{field} is not allowed for this role")),
        None => Ok(()),
    }
}

/// The field's string, which must be present, not null and not blank; returned untrimmed.
fn required_string<'a>(object: &'a Object, field: &str) -> Result<&'a str, String> {
    match object.get(field) {
        None | Some(Value::Null) => Err("is required".into()),
        Some(Value::String(text)) if text.trim().is_empty() => Err("must not be empty".into()),
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err("must be a string".into()),
    }
}

fn optional_string(object: &Object, field: &str) -> Result<(), String> {
    match object.get(field) {
        None | Some(Value::Null | Value::String(_)) => Ok(()),
        Some(_) => Err("must be a string".into()),
    }
}
