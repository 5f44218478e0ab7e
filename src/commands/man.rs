//! `netguard man`: the manual page (roff) on stdout, generated from the command line.

use super::{EXIT_OK, Failure};

pub fn run(cli: clap::Command) -> Result<i32, Failure> {
    print!("{}", page(cli)?);
    Ok(EXIT_OK)
}

/// The man page of the command-line definition `cli`.
pub fn page(cli: clap::Command) -> Result<String, Failure> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cli).render(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
