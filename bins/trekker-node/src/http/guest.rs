//! Guest endpoints: validate credentials, register a bot, list servers.

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use trekker_app::register::{CredentialInput, RegisterOutcome, RegisterRequest};
use trekker_domain::ValidationResult;
use utoipa::ToSchema;

use super::extract::ApiJson;
use super::views::{BotSummary, ServerPublic};
use super::{ApiError, ErrorBody};
use crate::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/servers/available", get(servers_available))
        .route("/api/guest/credential-updates/{update_id}", get(credential_update))
}

/// Routes behind the guest rate limit.
pub(crate) fn limited_router() -> Router<AppState> {
    Router::new()
        .route("/api/guest/register-bot", post(register_bot))
        // Each validation is a registry look-up: limited like registering.
        .route("/api/validate-credentials", post(validate_credentials))
}

// No Debug: it holds a session ID.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidateBody {
    pub session_id: Option<String>,
    pub phone_number: Option<String>,
}

/// The validation result (seed field names).
#[derive(serde::Serialize, ToSchema)]
#[schema(as = ValidationResult)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase")]
pub struct ValidationResultDoc {
    is_valid: bool,
    message: String,
    phone_number: Option<String>,
    already_registered: bool,
    cross_server_update: bool,
    target_server: Option<String>,
    bot_id: Option<String>,
}

/// Checks a session ID and tells what registering it would do.
#[utoipa::path(post, path = "/api/validate-credentials", tag = "guest", request_body = ValidateBody,
    responses((status = 200, body = ValidationResultDoc), (status = 400, body = ErrorBody),
        (status = 404, description = "registry row without its bot", body = ErrorBody)))]
pub(crate) async fn validate_credentials(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ValidateBody>,
) -> Result<Json<ValidationResult>, ApiError> {
    let session_id = body
        .session_id
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| ApiError::invalid_input("sessionId is required."))?;
    Ok(Json(state.trekker.validate_credentials(&session_id, body.phone_number.as_deref()).await?))
}

/// The JSON form of a registration. No Debug: it holds credentials.
#[derive(Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisterBody {
    pub bot_name: Option<String>,
    pub phone_number: Option<String>,
    /// session | base64 | file
    pub credential_type: Option<String>,
    /// For `session` and `base64`: `TREKKER~...` or bare base64.
    pub session_id: Option<String>,
    /// For `file`: the creds.json object.
    #[schema(value_type = Option<Object>)]
    pub credentials: Option<Value>,
    pub selected_server: Option<String>,
}

impl RegisterBody {
    fn into_request(self, file_text: Option<String>) -> Result<RegisterRequest, ApiError> {
        let kind = self.credential_type.as_deref().map(str::trim).map(str::to_ascii_lowercase);
        let credentials = match kind.as_deref() {
            Some("session" | "base64") => CredentialInput::SessionId(self.session_id.unwrap_or_default()),
            Some("file") => match (file_text, self.credentials) {
                (Some(text), _) => CredentialInput::FileText(text),
                (None, Some(value)) => CredentialInput::FileJson(value),
                (None, None) => {
                    return Err(ApiError::invalid_input(
                        "credentials (or the credsFile upload) is required for credentialType file.",
                    ));
                }
            },
            Some(_) => return Err(ApiError::invalid_input("credentialType must be session, base64 or file.")),
            // Lenient: infer the type from what was sent.
            None => match (self.session_id, file_text, self.credentials) {
                (Some(session), _, _) => CredentialInput::SessionId(session),
                (None, Some(text), _) => CredentialInput::FileText(text),
                (None, None, Some(value)) => CredentialInput::FileJson(value),
                (None, None, None) => {
                    return Err(ApiError::invalid_input("credentialType is required (session, base64 or file)."));
                }
            },
        };
        Ok(RegisterRequest {
            bot_name: self.bot_name.unwrap_or_default(),
            phone_number: self.phone_number.unwrap_or_default(),
            credentials,
            selected_server: self.selected_server,
        })
    }
}

/// Registers a bot (JSON, or multipart with the file in `credsFile`).
#[utoipa::path(post, path = "/api/guest/register-bot", tag = "guest", request_body = RegisterBody,
    responses(
        (status = 201, description = "registered or auto_assigned"),
        (status = 200, description = "credentials_updated"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody), (status = 502, body = ErrorBody),
        (status = 503, description = "every server is full", body = ErrorBody)))]
pub(crate) async fn register_bot(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    let register_request = if is_multipart {
        let multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|_| ApiError::invalid_input("The multipart body could not be read."))?;
        read_multipart(multipart).await?
    } else {
        let ApiJson(body) = ApiJson::<RegisterBody>::from_request(request, &state).await?;
        body.into_request(None)?
    };
    let outcome = state.trekker.register_bot(register_request).await?;
    Ok(registration_response(&outcome, &state.config.server_name))
}

async fn read_multipart(mut multipart: Multipart) -> Result<RegisterRequest, ApiError> {
    let mut body = RegisterBody::default();
    let mut file_text = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(err) if err.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(ApiError::payload_too_large()),
            Err(_) => return Err(ApiError::invalid_input("The multipart body could not be read.")),
        };
        let name = field.name().unwrap_or_default().to_owned();
        let text = match field.text().await {
            Ok(text) => text,
            Err(err) if err.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(ApiError::payload_too_large()),
            Err(_) => return Err(ApiError::invalid_input(format!("The multipart field {name} is not UTF-8 text."))),
        };
        match name.as_str() {
            "botName" => body.bot_name = Some(text),
            "phoneNumber" => body.phone_number = Some(text),
            "credentialType" => body.credential_type = Some(text),
            "sessionId" => body.session_id = Some(text),
            "selectedServer" => body.selected_server = Some(text),
            "credsFile" => file_text = Some(text),
            _ => {} // Unknown parts are ignored, like unknown JSON fields.
        }
    }
    body.into_request(file_text)
}

/// The success body of API.md for each outcome; `current` is this node.
fn registration_response(outcome: &RegisterOutcome, current: &trekker_domain::ServerName) -> Response {
    let bot = outcome.bot();
    let mut body = json!({
        "success": true,
        "type": outcome.kind(),
        "message": outcome.message(),
        "bot": BotSummary::from(bot),
    });
    let status = match outcome {
        RegisterOutcome::Registered { .. } => {
            body["server"] = json!(bot.server.as_str());
            StatusCode::CREATED
        }
        RegisterOutcome::AutoAssigned { from, available_slots, .. } => {
            body["assignedServer"] = json!(bot.server.as_str());
            body["currentServer"] = json!(from.as_str());
            body["availableSlots"] = json!(available_slots);
            StatusCode::CREATED
        }
        RegisterOutcome::CredentialsUpdated { .. } => {
            body["server"] = json!(bot.server.as_str());
            StatusCode::OK
        }
        RegisterOutcome::CrossServerUpdated { host, .. } => {
            body["hostingServer"] = json!(host.as_str());
            body["currentServer"] = json!(current.as_str());
            StatusCode::OK
        }
        RegisterOutcome::CrossServerQueued { host, update_id, .. } => {
            body["hostingServer"] = json!(host.as_str());
            body["currentServer"] = json!(current.as_str());
            body["updateId"] = json!(update_id);
            StatusCode::ACCEPTED
        }
    };
    (status, Json(body)).into_response()
}

/// Every server, its capacity and whether it is online.
#[utoipa::path(get, path = "/api/servers/available", tag = "guest", responses((status = 200, body = ServerList)))]
pub(crate) async fn servers_available(State(state): State<AppState>) -> Result<Json<ServerList>, ApiError> {
    let servers: Vec<ServerPublic> = state.trekker.servers().await?.iter().map(ServerPublic::from).collect();
    Ok(Json(ServerList { count: servers.len(), servers }))
}

#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ServerList {
    pub servers: Vec<ServerPublic>,
    pub count: usize,
}

#[derive(Debug, serde::Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialUpdateStatus {
    update_id: String,
    /// pending | delivered | failed | expired
    status: &'static str,
    hosting_server: String,
    attempts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
}

/// Progress of a queued cross-server credential update.
#[utoipa::path(get, path = "/api/guest/credential-updates/{update_id}", tag = "guest",
    responses((status = 200, body = CredentialUpdateStatus), (status = 404, body = ErrorBody)))]
pub(crate) async fn credential_update(
    State(state): State<AppState>,
    axum::extract::Path(update_id): axum::extract::Path<String>,
) -> Result<Json<CredentialUpdateStatus>, ApiError> {
    let update = state.trekker.credential_update(&update_id).await?;
    Ok(Json(CredentialUpdateStatus {
        update_id: update.id,
        status: update.status.as_str(),
        hosting_server: update.target.to_string(),
        attempts: update.attempts,
        last_error: update.last_error,
    }))
}
