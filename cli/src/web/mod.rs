//! `commitq web`: the dashboard. Server-rendered pages (cli/templates, escaped
//! by askama), one small script and one style sheet compiled into the
//! binary, nothing loaded from elsewhere.
//!
//! It acts as the database role it connects as: pages show an action only
//! when the role may call its function, the server checks the same before
//! acting, and the database checks again (42501 becomes 403). Every POST
//! carries the process's CSRF token and must come from the dashboard's own
//! origin (see `csrf.rs`).

mod actions;
mod chart;
mod csrf;
mod metrics;
mod pages;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clap::Args;
use deadpool_postgres::Pool;

use crate::error::{CliError, Exit};

#[derive(Args)]
pub struct WebArgs {
    /// Address and port to listen on. The default serves this machine only.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

pub struct AppState {
    pool: Pool,
    csrf: csrf::Token,
    listen: SocketAddr,
    /// The role the dashboard acts as, shown on every page.
    role: String,
}

type Shared = Arc<AppState>;

pub async fn serve(client: commitq::Client, url: &str, args: WebArgs) -> Result<(), CliError> {
    let _ = url;
    let pool = client.pool().clone();
    let role: String = pool
        .get()
        .await?
        .query_one("SELECT current_user::text", &[])
        .await?
        .get(0);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| {
            CliError::new(
                Exit::Error,
                format!("cannot listen on {}: {e}", args.listen),
            )
            .hint("choose another address or port with --listen 127.0.0.1:PORT")
        })?;
    let listen = listener.local_addr()?;
    let state = Arc::new(AppState {
        pool,
        csrf: csrf::Token::new(),
        listen,
        role,
    });
    // The first line on stdout says where it listens (tests read it when
    // they let the system choose the port with :0).
    println!(
        "commitq web: listening on http://{listen}/ as role {}",
        state.role
    );
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/queues", get(pages::queues))
        .route("/queues/pause", post(actions::pause))
        .route("/queues/resume", post(actions::resume))
        .route("/jobs", get(pages::jobs))
        .route("/jobs/bulk", post(actions::bulk))
        .route("/jobs/{id}", get(pages::job))
        .route("/jobs/{id}/retry", post(actions::retry))
        .route("/jobs/{id}/cancel", post(actions::cancel))
        .route("/schedules", get(pages::schedules))
        .route("/keys", get(pages::keys))
        .route("/leases", get(pages::leases))
        .route("/metrics", get(metrics::metrics))
        .route("/assets/app.js", get(app_js))
        .route("/assets/style.css", get(style_css))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// On every response: no framing, no sniffing, no referrer to other sites,
/// nothing cached,
/// and a content security policy that runs only the dashboard's own script
/// (so even a value that escaped escaping could not run). Before every
/// request: a Host check against DNS rebinding (see `csrf::host_allowed`).
async fn guard(State(state): State<Shared>, req: Request, next: Next) -> Response {
    if !csrf::host_allowed(&state.listen, req.headers()) {
        return (StatusCode::MISDIRECTED_REQUEST, "unexpected Host header").into_response();
    }
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // same-origin, not no-referrer: under no-referrer browsers send
    // "Origin: null" with the dashboard's own forms, which the CSRF check
    // must refuse (a sandboxed frame of any site sends that too).
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

async fn app_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../assets/app.js"),
    )
}

async fn style_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../assets/style.css"),
    )
}

async fn not_found() -> WebError {
    WebError::new(StatusCode::NOT_FOUND, "no such page")
}

/// An error page: its status says what kind of failure it was.
pub struct WebError {
    status: StatusCode,
    message: String,
}

impl WebError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> WebError {
        WebError {
            status,
            message: message.into(),
        }
    }
}

impl From<tokio_postgres::Error> for WebError {
    fn from(e: tokio_postgres::Error) -> Self {
        let cli = crate::error::from_db(&e);
        let status = match cli.exit {
            Exit::PermissionDenied => StatusCode::FORBIDDEN,
            Exit::NotFound => StatusCode::NOT_FOUND,
            Exit::WrongState => StatusCode::CONFLICT,
            Exit::Usage => StatusCode::BAD_REQUEST,
            Exit::Connection => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        WebError::new(status, cli.to_string())
    }
}

impl From<deadpool_postgres::PoolError> for WebError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        WebError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            CliError::from(e).to_string(),
        )
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let page = pages::ErrorPage {
            status: self.status.as_u16(),
            reason: self.status.canonical_reason().unwrap_or(""),
            message: &self.message,
        };
        (self.status, Html(pages::render(&page))).into_response()
    }
}
