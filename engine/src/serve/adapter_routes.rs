//! vLLM's run-time LoRA endpoints: `POST /v1/load_lora_adapter`
//! `{"lora_name", "lora_path", "load_inplace"?}` and
//! `POST /v1/unload_lora_adapter` `{"lora_name"}`. As vLLM, success is a 200
//! with a plain-text sentence; failures are OpenAI-shaped errors.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::serve::adapters::{self, Loaded};
use crate::serve::error::ApiError;
use crate::serve::http::{authorize, read_body, unix_now, AppState};
use crate::serve::request::parse_as;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadRequest {
    lora_name: Option<String>,
    lora_path: Option<String>,
    #[serde(default)]
    load_inplace: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnloadRequest {
    lora_name: Option<String>,
    /// vLLM's integer id of the adapter, accepted and ignored: names identify
    /// adapters here.
    #[serde(default, rename = "lora_int_id")]
    _lora_int_id: Option<i64>,
}

fn required(v: Option<String>, field: &str) -> Result<String, ApiError> {
    v.ok_or_else(|| ApiError::invalid(field, format!("`{field}` is required")))
}

fn success(text: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// Loads an adapter off the async runtime's threads and adds it by name.
pub async fn load(State(s): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    authorize(&s, req.headers())?;
    let body = read_body(&s, req).await?;
    let r: LoadRequest = parse_as(&body)?;
    let name = required(r.lora_name, "lora_name")?;
    let path = PathBuf::from(required(r.lora_path, "lora_path")?);
    adapters::check_name(&name, &s.config.model_id)?;
    if path.as_os_str().is_empty() {
        return Err(ApiError::invalid(
            "lora_path",
            "`lora_path` must not be empty",
        ));
    }
    // Refused before the (slow) load; checked again when adding, for a
    // concurrent load of the same name.
    if !r.load_inplace && s.adapters.contains(&name) {
        return Err(adapters::duplicate(&name));
    }
    let model = s.model.clone();
    let (n, p) = (name.clone(), path.clone());
    let adapter = tokio::task::spawn_blocking(move || adapters::load(&model, &n, &p))
        .await
        .map_err(|e| {
            ApiError::engine(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("loading LoRA adapter `{name}` stopped: {e}"),
            )
        })??;
    s.adapters.insert(
        Loaded {
            name: name.clone(),
            path: path.clone(),
            created: unix_now(),
            adapter,
        },
        r.load_inplace,
    )?;
    log::info!("loaded LoRA adapter {name} from {}", path.display());
    Ok(success(format!(
        "Success: LoRA adapter '{name}' added successfully."
    )))
}

/// Removes an adapter's name. Requests already accepted for it still finish
/// with it; it is freed when the last of them ends.
pub async fn unload(State(s): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    authorize(&s, req.headers())?;
    let body = read_body(&s, req).await?;
    let r: UnloadRequest = parse_as(&body)?;
    let name = required(r.lora_name, "lora_name")?;
    if !s.adapters.remove(&name) {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("no LoRA adapter named `{name}` is loaded (GET /v1/models)"),
            kind: "invalid_request_error",
            param: Some("lora_name".into()),
            code: Some("adapter_not_found"),
        });
    }
    log::info!("unloaded LoRA adapter {name}");
    Ok(success(format!(
        "Success: LoRA adapter '{name}' removed successfully."
    )))
}
