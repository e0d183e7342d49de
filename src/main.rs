fn main() {
    println!("{}", semiflow_stages::registry().len());
}
