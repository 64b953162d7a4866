//! `TESSERA_URL=http://127.0.0.1:8080 TESSERA_ISSUER=http://127.0.0.1:8080 cargo run -p tessera-example-app`
//! then `curl -H "authorization: Bearer $AT" localhost:3000/me`.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::var("TESSERA_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let issuer = std::env::var("TESSERA_ISSUER").unwrap_or_else(|_| base.clone());
    let tessera = tessera_axum::Tessera::builder(base)
        .issuer(issuer)
        .check_revocation(true)
        .build()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("example app on http://{}", listener.local_addr()?);
    axum::serve(listener, tessera_example_app::router(tessera)).await?;
    Ok(())
}
