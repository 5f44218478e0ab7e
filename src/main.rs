fn main() {
    std::process::exit(netguard::cli::main());
}
