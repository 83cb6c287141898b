//! `POST /transactions/{tx}/cancel`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::pending::{self, Phase};
use super::read::{Found, locate};
use super::{Error, ListenerCtx, tx_id};

/// A pending transaction is dropped with its uploads (nothing was
/// stored); a stored one is cancelled in the store: at once if no attempt
/// is running, else the running attempt finishes and the transaction
/// stays final (`downstream cancelled`). A final one is left as it is.
/// Answered 200 either way, as the original does; unknown: 404.
pub async fn post(
    State(ctx): State<Arc<ListenerCtx>>,
    Path(tx): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let id = tx_id(&tx)?;
    let spec = ctx.spec();
    let found = match locate(&ctx, &spec, &headers, &id, "/cancel").await {
        Ok(f) => f,
        Err(r) => return Ok(r),
    };
    match found {
        Found::Pending(p) => {
            let mut st = p.state.lock().await;
            if st.phase == Phase::Open {
                pending::discard(&ctx.rest, &p, &mut st, Phase::Cancelled).await;
            }
        }
        Found::Stored(_) => {
            ctx.rest
                .queue
                .store
                .cancel(&id)
                .await
                .map_err(Error::store)?;
        }
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{}",
    )
        .into_response())
}
