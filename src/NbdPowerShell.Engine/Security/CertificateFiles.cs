using System.Security.Cryptography.X509Certificates;

namespace NbdPowerShell.Engine.Security;

/// <summary>
/// Loads certificates from files: PEM (certificate plus key, in one file or two) or PKCS#12 without a password.
/// Keys are re-imported through PKCS#12 so that SslStream can use them on every platform. Never logs contents.
/// </summary>
public static class CertificateFiles
{
    /// <summary>A certificate with its private key from <paramref name="certificatePath"/> (and <paramref name="keyPath"/> for a separate PEM key).</summary>
    public static X509Certificate2 LoadWithKey(string certificatePath, string? keyPath = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(certificatePath);
        RequireFile(certificatePath, "certificate");
        if (keyPath is not null) RequireFile(keyPath, "private key");
        X509Certificate2 loaded;
        try
        {
            loaded = IsPem(certificatePath)
                ? X509Certificate2.CreateFromPemFile(certificatePath, keyPath)
                : new X509Certificate2(File.ReadAllBytes(certificatePath), (string?)null, X509KeyStorageFlags.Exportable);
        }
        catch (System.Security.Cryptography.CryptographicException e)
        {
            throw new ArgumentException(
                $"Cannot load a certificate with its private key from '{certificatePath}'{(keyPath is null ? "" : $" and '{keyPath}'")}: {e.Message} " +
                "Give a PEM certificate and an unencrypted PEM key (PKCS#8 or PKCS#1), or a PKCS#12 file without a password.", e);
        }
        using (loaded)
        {
            if (!loaded.HasPrivateKey)
                throw new ArgumentException($"'{certificatePath}' holds no private key; give the key file as well.");
            // PEM keys are ephemeral; a PKCS#12 round trip gives a key SslStream accepts everywhere.
            return new X509Certificate2(loaded.Export(X509ContentType.Pkcs12), (string?)null, X509KeyStorageFlags.Exportable);
        }
    }

    /// <summary>Every certificate in a PEM bundle (e.g. ca-cert.pem), for trust anchors.</summary>
    public static X509Certificate2Collection LoadAuthorities(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        RequireFile(path, "certificate authority");
        var collection = new X509Certificate2Collection();
        try
        {
            if (IsPem(path)) collection.ImportFromPemFile(path);
            else collection.Add(new X509Certificate2(File.ReadAllBytes(path)));
        }
        catch (System.Security.Cryptography.CryptographicException e)
        {
            throw new ArgumentException($"Cannot read certificates from '{path}': {e.Message}", e);
        }
        if (collection.Count == 0)
            throw new ArgumentException($"'{path}' contains no certificate (expected PEM blocks of -----BEGIN CERTIFICATE-----).");
        return collection;
    }

    private static void RequireFile(string path, string what)
    {
        if (!File.Exists(path))
            throw new FileNotFoundException($"The {what} file '{path}' does not exist.", path);
    }

    private static bool IsPem(string path)
    {
        using var reader = new StreamReader(path);
        var head = new char[4096];
        int n = reader.ReadBlock(head, 0, head.Length);
        return new string(head, 0, n).Contains("-----BEGIN ", StringComparison.Ordinal);
    }
}
