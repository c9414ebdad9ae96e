//! The `pic-store` binary: runs the command and turns its error into a
//! message on stderr and the exit code of spec §3.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match pic_store::cli::run(&args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("pic-store: {e}");
            for detail in e.details().iter().skip(1) {
                eprintln!("  {detail}");
            }
            std::process::exit(e.exit_code());
        }
    }
}
